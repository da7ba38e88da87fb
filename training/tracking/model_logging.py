"""Logging models to MLflow: the Keras flavor with its tensor signature, pinned requirements.

:func:`log_keras_model` logs ``keras_model``: the Keras flavor with the signature
``(-1, T, H, W, C) float32 -> (-1, classes) float32`` (from the dataset spec) and a one-clip
input example, so the model page shows what it takes and MLflow checks that it serves.
Requirements are pinned to the installed versions, which also spares MLflow's slow
requirement inference (it loads the model in a subprocess).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import mlflow

from pipeline import records
from pipeline.records import DatasetSpec

KERAS_MODEL = "keras_model"
PYFUNC_MODEL = "video_classifier"  # the servable pyfunc (training.tracking.pyfunc)


def pinned_requirements(*packages: str) -> list[str]:
    """``package==installed version`` for the model's requirements (no slow inference)."""
    from importlib import metadata

    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _save_keras(path: str, **kwargs: Any) -> Any:
    # mlflow.keras.save_model (3.17) writes the input example before creating ``path``.
    os.makedirs(path, exist_ok=True)
    return mlflow.keras.save_model(path=path, **kwargs)


def keras_signature(spec: DatasetSpec) -> Any:
    """The tensor signature ``(-1, T, H, W, C) float32 -> (-1, classes) float32``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec.clip_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_classes))]),
    )


def log_keras_model(model: Any, spec: DatasetSpec, *, name: str = KERAS_MODEL, step: int = 0) -> Any:
    """Logs a Keras model (Keras flavor) with the tensor signature and a one-clip input example.

    ``step``: the run's step the model belongs to (MLflow attaches the run's metrics at that step).

    Raises:
        ContractError: if the model's input is not the spec's clip shape.

    Returns:
        MLflow's ``ModelInfo`` (``model_uri`` is ``models:/<model id>``).
    """
    import types

    import numpy as np
    from mlflow.models import Model

    records.check_clip_shape(spec.clip_shape, tuple(model.input_shape[1:]), "the model")
    flavor = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_keras)
    with _no_progress_bars():  # MLflow checks the example by predicting it with Keras' default progress bar
        return Model.log(
            artifact_path=None,
            name=name,
            flavor=flavor,
            model=model,
            signature=keras_signature(spec),
            input_example=np.zeros((1, *spec.clip_shape), np.float32),
            pip_requirements=pinned_requirements("tensorflow", "keras"),
            step=step,
        )


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Keras prints no progress bar inside the block (not to stdout, nor to absl's log instead)."""
    import keras
    from absl import logging as absl_logging

    interactive = keras.config.is_interactive_logging_enabled()
    verbosity = absl_logging.get_verbosity()
    keras.config.disable_interactive_logging()  # progress goes to absl's log...
    absl_logging.set_verbosity(absl_logging.WARNING)  # ...which drops it
    try:
        yield
    finally:
        absl_logging.set_verbosity(verbosity)
        if interactive:
            keras.config.enable_interactive_logging()


def logged_model_names(run_id: str) -> dict[str, str]:
    """``{name: model id}`` of the models logged by a run (the last of each name wins)."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    names: dict[str, str] = {}
    for output in (run.outputs.model_outputs if run.outputs else None) or []:
        names[client.get_logged_model(output.model_id).name] = output.model_id
    return names
