"""The video classifier that predict and MLflow serve: video in, label and probabilities out.

A video is decoded and cut into clips by :func:`pipeline.video.iter_clips` with the
``PreprocessConfig`` stored in the model's ``dataset.json`` (``sampling``), so it is sampled
and encoded exactly as the records the model was trained on; the frames are then decoded and
scaled by training's own tf.data parser (:func:`training.data.parse_clip`), so the model sees
bit-identical input. The model classifies every clip and the clip probabilities are averaged
into the video's.

:class:`VideoClassifier` does that for ``training.predict``; :class:`VideoClassifierModel`
wraps it as an ``mlflow.pyfunc.PythonModel`` whose artifacts are ``model.keras`` and
``dataset.json``. Served with ``mlflow models serve -m models:/vidseq-cnn-lstm@champion``, it
takes a DataFrame whose ``video`` column holds the video's bytes in base64 (or, when the
operator sets ``VIDSEQ_SERVE_ALLOWED_ROOT``, a path inside that folder: :mod:`training.video_input`),
and answers one row per video::

    POST /invocations {"dataframe_records": [{"video": "<base64>"}]}
    -> {"predictions": [{"label": "MoveLeft", "probabilities": {...}, "clips": 3, "error": null}]}

A row whose video cannot be read gets ``error`` (``"<stage>: <reason>"``) and no label; the
other rows are still answered. :mod:`training.limits` caps what a request and a video may cost:
too many rows or bytes is refused whole (HTTP 429), a worker whose decode slots are all taken
refuses at once (HTTP 503, ``busy: ...``), and a video over a cap gets ``limit: ...`` or
``timeout: ...`` as soon as the cap is hit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import records
from pipeline.config import ConfigError, PreprocessConfig, from_mapping
from pipeline.records import ContractError, DatasetSpec
from pipeline.video import DecodeLimits, VideoError, iter_clips

from training.artifacts import model_files
from training.limits import Busy, DecodeGate, LimitExceeded, Limits, RequestBudget, release_memory
from training.video_input import allowed_root, open_video

__all__ = ["VideoClassifier", "VideoClassifierModel", "log_video_classifier", "open_video", "preprocess_config"]

logger = logging.getLogger(__name__)

VIDEO_COLUMN = "video"
OUTPUT_COLUMNS = ("label", "probabilities", "clips", "error")
PYFUNC_MODEL = "video_classifier"
CLIP_BATCH = 16
_PACKAGES = ("pipeline", "training")


def preprocess_config(spec: DatasetSpec) -> PreprocessConfig:
    """The preprocessing that made the records, from ``dataset.json``'s ``sampling``.

    Raises:
        ContractError: if ``sampling`` is missing or not a ``preprocess`` section.
    """
    if not spec.sampling:
        raise ContractError(
            "dataset.json has no sampling parameters, so videos cannot be sampled as in training: "
            "use records written by the preprocessing job (python -m pipeline)"
        )
    try:
        return from_mapping(PreprocessConfig, spec.sampling, "dataset.json sampling")
    except ConfigError as exc:
        raise ContractError(f"{exc}: re-run preprocessing with this vidseq version") from exc


class VideoClassifier:
    """A trained Keras model and the spec it was trained on, classifying whole videos.

    Args:
        model: a Keras model ``(batch, T, H, W, C) -> (batch, classes)``.
        spec: the ``dataset.json`` the model was trained on.
        batch_size: clips per forward pass.
        limits: what one video (and one served request) may cost; the defaults if ``None``.
        limit_names: how messages name each limit's setting (default the ``VIDSEQ_*`` variables;
            ``training.predict`` names its flags).

    Raises:
        ContractError: if the model does not take the spec's clips or ``sampling`` is unusable.
    """

    def __init__(
        self,
        model: Any,
        spec: DatasetSpec,
        batch_size: int = CLIP_BATCH,
        limits: Limits | None = None,
        limit_names: Mapping[str, str] | None = None,
    ):
        records.check_clip_shape(spec.clip_shape, tuple(model.input_shape[1:]), "the model")
        if model.output_shape[-1] != spec.num_classes:
            raise ContractError(
                f"the model outputs {model.output_shape[-1]} classes but its dataset.json lists "
                f"{spec.num_classes}: keep model.keras with the dataset.json it was trained on"
            )
        self.model = model
        self.spec = spec
        self.preprocess = preprocess_config(spec)
        self.batch_size = batch_size
        self.limits = limits or Limits()
        self.limit_names = dict(limit_names or {})

    @classmethod
    def from_files(cls, model_path: str, dataset_json: str, **options: Any) -> VideoClassifier:
        """Loads ``model.keras`` and its ``dataset.json``; ``options`` go to the constructor.

        Raises:
            ContractError: if ``model.keras`` is damaged (e.g. truncated) or not a Keras model.
        """
        with open(dataset_json, encoding="utf-8") as handle:
            spec = DatasetSpec.from_json(handle.read(), source=dataset_json)
        return cls(load_keras_model(model_path), spec, **options)

    @classmethod
    def from_dir(cls, model_dir: str, **options: Any) -> VideoClassifier:
        """Loads a training output directory (``model.keras`` + ``dataset.json``).

        Raises:
            FileNotFoundError: naming the missing file.
            ContractError: if ``model.keras`` is damaged.
        """
        return cls.from_files(*model_files(model_dir), **options)

    def classify(self, source: Any, name: str = "", limits: DecodeLimits | None = None) -> dict[str, Any]:
        """Classifies one video (a path or a binary file object) within ``limits`` (default :attr:`limits`).

        Returns:
            ``{"label": str, "probabilities": {class: p}, "clips": n}``; probabilities are
            the mean over the video's clips.

        Raises:
            VideoError: if the video cannot be decoded into clips.
        """
        total = np.zeros(self.spec.num_classes, np.float64)
        count = 0
        batch: list[np.ndarray] = []
        for frames in self.clip_arrays(source, name, limits):
            batch.append(frames)
            if len(batch) == self.batch_size:
                total += self._predict(batch).sum(axis=0)
                count += len(batch)
                batch = []
        if batch:
            total += self._predict(batch).sum(axis=0)
            count += len(batch)
        if not count:
            raise VideoError("the video gave no clip", "sample")
        probs = total / count
        return {
            "label": self.spec.classes[int(np.argmax(probs))],
            "probabilities": {c: float(p) for c, p in zip(self.spec.classes, probs)},
            "clips": count,
        }

    def clip_arrays(self, source: Any, name: str = "", limits: DecodeLimits | None = None) -> Iterator[np.ndarray]:
        """The video's clips exactly as training saw them: float32 ``(T, H, W, C)`` in [0, 1].

        Clips come from :func:`pipeline.video.iter_clips` with the records' preprocessing; each
        is serialised with :func:`pipeline.records.encode_clip` and decoded by
        :func:`training.data.parse_clip`, the tf.data parser of training, because TensorFlow's
        JPEG decoder (``INTEGER_FAST`` DCT) differs by a few levels from Pillow's.

        Raises:
            VideoError: if the video cannot be decoded into clips or breaks a limit.
        """
        import tensorflow as tf

        from training.data import parse_clip

        if limits is None:
            limits = self.limits.decode_limits(names=self.limit_names)
        timeout = self.preprocess.video_timeout_s
        for clip in iter_clips(source, self.preprocess, name=name, timeout_s=timeout, limits=limits):
            serialized = records.encode_clip(
                clip.frames, 0, self.spec.classes[0], name or "video", clip.frame_indices, clip.timestamps
            )
            frames = parse_clip(tf.constant(serialized), self.spec)["clip"]
            yield tf.image.convert_image_dtype(frames, tf.float32).numpy()  # as training.data

    def _predict(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.stack(batch)), dtype=np.float64)

    def classify_value(self, value: Any, root: str | None = None, limits: DecodeLimits | None = None) -> dict[str, Any]:
        """Classifies one served ``video`` cell; a bad video gives ``error`` instead of raising.

        Args:
            value: base64, bytes, or a path inside ``root`` (see :func:`training.video_input.open_video`).
            root: the folder path rows may name, or ``None`` for no path rows.
            limits: the video's caps (default :attr:`limits`).

        Returns:
            ``{"label", "probabilities", "clips", "error"}``: ``error`` is ``None`` on
            success, else ``"<stage>: <reason>"`` with the other fields ``None``.
        """
        try:
            source, name = open_video(value, root)
            with contextlib.closing(source):
                return {**self.classify(source, name, limits), "error": None}
        except VideoError as exc:
            logger.info("video %s: %s (%s)", _short(value), exc.reason, exc.stage)
            return _error_row(f"{exc.stage}: {exc.reason}")
        except OSError as exc:  # e.g. a file that breaks while being read
            return _error_row(f"open: {exc.strerror or exc}")

    def classify_values(self, values: Sequence[Any], root: str | None = None) -> list[dict[str, Any]]:
        """Classifies the rows of one request within :attr:`limits`; rows left when the request's
        budget is spent get a ``timeout`` error."""
        budget = RequestBudget(self.limits, self.limit_names)
        rows = []
        for value in values:
            try:
                limits = budget.video_limits()
            except VideoError as exc:
                rows.append(_error_row(f"{exc.stage}: {exc.reason}"))
                continue
            rows.append(self.classify_value(value, root, limits))
        return rows


def load_keras_model(path: str) -> Any:
    """``keras.saving.load_model`` with one clear error for a damaged file.

    Raises:
        ContractError: naming the file and the fix, for a truncated or non-Keras file.
    """
    import keras

    if not zipfile.is_zipfile(path):
        raise ContractError(
            f"{path} is damaged (truncated?) or not a Keras .keras file: restore it or re-train "
            "(python -m training.train)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, KeyError, OSError, ... for a damaged archive
        logger.debug("loading %s", path, exc_info=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContractError(
            f"{path} cannot be loaded as a Keras model ({detail}): restore it or re-train (python -m training.train)"
        ) from exc


def _error_row(error: str) -> dict[str, Any]:
    return {"label": None, "probabilities": None, "clips": None, "error": error}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


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
    """Copies the ``pipeline`` and ``training`` packages (no caches) for the model's ``code/``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = []
    for package in _PACKAGES:
        target = os.path.join(destination, package)
        shutil.copytree(os.path.join(root, package), target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        paths.append(target)
    return paths


def log_video_classifier(model_dir: str, *, name: str = PYFUNC_MODEL) -> Any:
    """Logs the servable pyfunc of the model in ``model_dir`` into the active run.

    The model carries ``model.keras``, ``dataset.json`` and the ``pipeline`` and ``training``
    code it needs, with pinned requirements, so ``mlflow models serve`` runs it anywhere
    those packages install; its ``model_config`` holds the default :class:`Limits`, which
    ``load_model(..., model_config=...)``, ``SERVING_MODEL_CONFIG`` and ``VIDSEQ_*`` override.

    Returns:
        MLflow's ``ModelInfo``.

    Raises:
        FileNotFoundError: if ``model_dir`` lacks ``model.keras`` or ``dataset.json``.
        ContractError: if ``dataset.json`` has no usable ``sampling``.
    """
    from training.model_logging import pinned_requirements

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
        )

