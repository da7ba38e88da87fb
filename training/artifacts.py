"""The trained-model folder: the file names training writes and the lookup every later stage uses.

Kept free of TensorFlow and MLflow imports, so any stage can name the files cheaply.
"""

from __future__ import annotations

import os

from pipeline import records

MODEL_FILE = "model.keras"


def model_files(model_dir: str) -> tuple[str, str]:
    """``(model.keras, dataset.json)`` paths of a training output folder.

    Raises:
        FileNotFoundError: naming the missing file and how to make it.
    """
    paths = (os.path.join(model_dir, MODEL_FILE), os.path.join(model_dir, records.DATASET_JSON))
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: train a model first (python -m training.train --output {model_dir})"
            )
    return paths
