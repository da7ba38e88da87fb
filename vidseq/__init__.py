"""vidseq's foundation, shared by every stage: the params schema, the error base and the CLI harness.

Nothing here imports Beam, TensorFlow or MLflow, and nothing here imports ``pipeline`` or
``training``: it is the bottom layer (``vidseq`` <- ``pipeline`` <- ``training`` <-
``training.tracking`` <- the stage entry points).
"""
