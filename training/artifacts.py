"""The layout of ``models/`` and ``reports/``: every file name the stages write, in one place.

Kept free of TensorFlow and MLflow imports, so any stage (and ``training.summary``) can name
the files cheaply. Training writes the model folder (``MODELS_DIR`` by default); evaluation and
registration write the reports folder (``REPORTS_DIR``).
"""

from __future__ import annotations

import os

from pipeline import records
from vidseq.errors import MissingFileError

MODELS_DIR = "models"
REPORTS_DIR = "reports"

# the model folder (python -m training.train --output models)
MODEL_FILE = "model.keras"
DATASET_JSON = records.DATASET_JSON  # the spec the model was trained on
HISTORY_JSON = "history.json"
HISTORY_CSV = "history.csv"  # one row per epoch, for dvc plots
CURVES_PNG = "training_curves.png"
RUN_FILE = "mlflow_run.json"  # the MLflow run that evaluate and register continue
BACKUP_DIR = "backup"  # Keras BackupAndRestore, until training succeeds
BEST_WEIGHTS = os.path.join("checkpoint", "best.weights.h5")
RESUME_JSON = "resume.json"  # what the backup was made of: resume only the same model on the same data
TRAINING_ARTIFACTS = (CURVES_PNG, HISTORY_JSON, HISTORY_CSV)  # logged to MLflow under training/

# the reports folder (python -m training.evaluate --output reports; training.register)
METRICS_JSON = "metrics.json"
PREDICTIONS_CSV = "predictions.csv"
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_CSV = "per_class.csv"
REGISTRY_JSON = "registry.json"  # the full record: run id, version, aliases (differs per store: no DVC output)
REGISTERED_JSON = "registered.json"  # what was registered, the same on every machine: register's DVC output
EVALUATION_ARTIFACTS = (METRICS_JSON, CONFUSION_PNG, CONFUSION_CSV, PER_CLASS_CSV)  # logged under evaluation/


def report_path(name: str, reports_dir: str = REPORTS_DIR) -> str:
    """``reports/<name>``: the default place of a report file."""
    return os.path.join(reports_dir, name)


def model_files(model_dir: str) -> tuple[str, str]:
    """``(model.keras, dataset.json)`` paths of a training output folder.

    Raises:
        MissingFileError: naming the missing file and how to make it.
    """
    paths = (os.path.join(model_dir, MODEL_FILE), os.path.join(model_dir, DATASET_JSON))
    for path in paths:
        if not os.path.exists(path):
            raise MissingFileError(
                f"{path} not found: train a model first (python -m training.train --output {model_dir})"
            )
    return paths
