"""vidseq training: CNN-LSTM training, evaluation, registration and prediction (Keras, MLflow)."""
