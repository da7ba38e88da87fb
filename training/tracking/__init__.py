"""MLflow for vidseq: the run the stages share, lineage, model logging, the registry gate and the pyfunc.

The only package that imports MLflow. It sits above the Keras core (``training.data``,
``training.model``, ``training.fit``, ``training.metrics``, ``training.classifier``), which it
logs and wraps, and below the stage entry points (``python -m training.train`` ...), which
compose the two:

* :mod:`training.tracking.runs`: the store, the experiment and the one run per pipeline run.
* :mod:`training.tracking.naming`: the run's name (the DVC experiment, else ``<sha>-<dataset>-<n>``).
* :mod:`training.tracking.datasets`: the records' splits as the run's dataset inputs.
* :mod:`training.tracking.model_card`: the Markdown description of the run, version and model.
* :mod:`training.tracking.review`: the test clips sheet and animation, the per-class table.
* :mod:`training.tracking.lineage`: git commit and the records' DVC hash (no MLflow import).
* :mod:`training.tracking.model_logging`: the Keras-flavor model with its tensor signature.
* :mod:`training.tracking.pyfunc`: the servable ``video_classifier`` pyfunc.
* :mod:`training.tracking.registry`: registration, ``@challenger`` and the ``@champion`` gate.
"""
