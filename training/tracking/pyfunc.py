"""The served model: :class:`~training.classifier.VideoClassifier` as an MLflow pyfunc, and how it is logged.

Served with ``mlflow models serve -m models:/vidseq-cnn-lstm@champion``, it takes a DataFrame
whose ``video`` column holds the video's bytes in base64 (or, when the operator sets
``VIDSEQ_SERVE_ALLOWED_ROOT``, a path inside that folder: :mod:`training.video_input`), and
answers one row per video::

    POST /invocations {"dataframe_records": [{"video": "<base64>"}]}
    -> {"predictions": [{"label": "MoveLeft", "probabilities": {...}, "clips": 3, "error": null}]}

A row whose video cannot be read gets ``error`` (``"<stage>: <reason>"``) and no label; the
other rows are still answered. :mod:`training.limits` caps what a request may cost: too many
rows or bytes is refused whole (HTTP 429), a worker whose decode slots are all taken refuses at
once (HTTP 503, ``busy: ...``). The model bundles exactly the project code it runs
(:func:`training.tracking.bundle.closure` of this module).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import records
from pipeline.records import DatasetSpec
from training.artifacts import model_files
from training.classifier import VideoClassifier, preprocess_config
from training.limits import Busy, DecodeGate, LimitExceeded, Limits, release_memory
from training.tracking import bundle
from training.tracking.model_logging import PYFUNC_MODEL
from training.video_input import allowed_root

__all__ = ["PYFUNC_MODEL", "VideoClassifierModel", "log_video_classifier", "pyfunc_signature"]

logger = logging.getLogger(__name__)

VIDEO_COLUMN = "video"
OUTPUT_COLUMNS = ("label", "probabilities", "clips", "error")


def _video_values(model_input: Any) -> list[Any]:
    """The ``video`` cells of a pyfunc input: a DataFrame, a dict of columns, a list or one value."""
    if isinstance(model_input, pd.DataFrame):
        if VIDEO_COLUMN not in model_input.columns:
            raise ValueError(
                f"the input needs a {VIDEO_COLUMN!r} column (file path or base64 video), "
                f"got {list(model_input.columns)}"
            )
        return list(model_input[VIDEO_COLUMN])
    if isinstance(model_input, dict):
        values = model_input.get(VIDEO_COLUMN)
        if values is None:
            raise ValueError(f"the input needs a {VIDEO_COLUMN!r} key, got {sorted(model_input)}")
        return list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    if isinstance(model_input, (list, tuple, np.ndarray, pd.Series)):
        return [row.get(VIDEO_COLUMN) if isinstance(row, dict) else row for row in model_input]
    return [model_input]


class VideoClassifierModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc: ``video`` column (path or base64) -> ``label``, ``probabilities``, ``clips``, ``error``.

    Artifacts: ``keras_model`` (``model.keras``) and ``dataset`` (its ``dataset.json``). The
    limits (:class:`training.limits.Limits`) and the allowed folder of path rows are read at load
    time from the model's ``model_config`` and the ``VIDSEQ_*`` environment.
    """

    def load_context(self, context: Any) -> None:
        self.limits = Limits.load(config=getattr(context, "model_config", None))
        self.root = allowed_root()
        self.gate = DecodeGate(self.limits.max_concurrent)
        self.classifier = VideoClassifier.from_files(
            context.artifacts["keras_model"], context.artifacts["dataset"], limits=self.limits
        )
        logger.info("limits %s; path rows %s", self.limits, f"under {self.root}" if self.root else "off")

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Classifies every row; returns a DataFrame with :data:`OUTPUT_COLUMNS`.

        ``model_input`` is a DataFrame when served; a dict of columns, a list or a single
        base64 string also work in-process.

        Raises:
            MlflowException: ``REQUEST_LIMIT_EXCEEDED`` (HTTP 429) for too many rows or bytes,
                ``TEMPORARILY_UNAVAILABLE`` (HTTP 503) when every decode slot is taken.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import REQUEST_LIMIT_EXCEEDED, TEMPORARILY_UNAVAILABLE

        values = _video_values(model_input)
        try:
            self.limits.check_request(values)
            with self.gate.slot():
                rows = self.classifier.classify_values(values, self.root)
        except LimitExceeded as exc:
            raise MlflowException(f"limit: {exc}", error_code=REQUEST_LIMIT_EXCEEDED) from None
        except Busy as exc:
            raise MlflowException(str(exc), error_code=TEMPORARILY_UNAVAILABLE) from None
        finally:
            del values
            release_memory()
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS), dtype=object)


def pyfunc_signature(spec: DatasetSpec) -> Any:
    """``video: string`` -> ``label: string, probabilities: map<string, double>, clips: long, error: string``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, DataType, Map, Schema

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.string, VIDEO_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label", required=False),
                ColSpec(Map(DataType.double), "probabilities", required=False),
                ColSpec(DataType.long, "clips", required=False),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
    )


def _copy_code(destination: str) -> list[str]:
    """Copies the project files this module runs (and nothing else) for the model's ``code/``.

    Returns:
        The copied top-level package folders, for ``code_paths``.
    """
    packages = set()
    for module, path in bundle.closure([__name__]).items():
        relative = os.path.relpath(path, bundle.ROOT)
        target = os.path.join(destination, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(path, target)
        packages.add(module.split(".")[0])
    return [os.path.join(destination, package) for package in sorted(packages)]


def log_video_classifier(model_dir: str, *, name: str = PYFUNC_MODEL, step: int = 0) -> Any:
    """Logs the servable pyfunc of the model in ``model_dir`` into the active run.

    The model carries ``model.keras``, ``dataset.json`` and exactly the project code it runs
    (:func:`training.tracking.bundle.closure`), with pinned requirements, so ``mlflow models serve`` runs it anywhere
    those packages install (at run step ``step``: MLflow attaches the run's metrics at that step);
    its ``model_config`` holds the default :class:`Limits`, which
    ``load_model(..., model_config=...)``, ``SERVING_MODEL_CONFIG`` and ``VIDSEQ_*`` override.

    Returns:
        MLflow's ``ModelInfo``.

    Raises:
        FileNotFoundError: if ``model_dir`` lacks ``model.keras`` or ``dataset.json``.
        ContractError: if ``dataset.json`` has no usable ``sampling``.
    """
    from training.tracking.model_logging import pinned_requirements

    model_path, dataset_path = model_files(model_dir)
    artifacts = {"keras_model": model_path, "dataset": dataset_path}
    spec = records.read_spec(model_dir)
    preprocess_config(spec)  # fail now, not when serving
    with tempfile.TemporaryDirectory(prefix="vidseq-code-") as tmp:
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=VideoClassifierModel(),
            artifacts=artifacts,
            code_paths=_copy_code(tmp),
            signature=pyfunc_signature(spec),
            model_config=dataclasses.asdict(Limits()),
            pip_requirements=pinned_requirements("tensorflow", "keras", "av", "numpy", "pandas", "pillow", "pyyaml"),
            step=step,
        )

