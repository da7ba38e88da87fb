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
takes a DataFrame whose ``video`` column holds a file path (on the server) or the video's
bytes in base64, and answers one row per video::

    POST /invocations {"dataframe_records": [{"video": "<base64>"}]}
    -> {"predictions": [{"label": "MoveLeft", "probabilities": {...}, "clips": 3, "error": null}]}

A row whose video cannot be read gets ``error`` (``"<stage>: <reason>"``) and no label; the
other rows are still answered.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from pipeline import records
from pipeline.config import ConfigError, PreprocessConfig, from_mapping
from pipeline.records import ContractError, DatasetSpec
from pipeline.video import VideoError, iter_clips

from training.artifacts import model_files

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


def open_video(value: Any) -> tuple[Any, str]:
    """Turns a ``video`` cell into something PyAV opens and a name for messages.

    Args:
        value: a path to an existing file, the video's bytes in base64 (``data:`` URL prefix
            allowed) or raw ``bytes``.

    Returns:
        ``(path or binary file object, name)``.

    Raises:
        VideoError: (stage ``open``) for anything else.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(value)), f"<{len(value)} bytes>"
    if not isinstance(value, str) or not value.strip():
        raise VideoError(f"expected a file path or base64 video bytes, got {type(value).__name__}", "open")
    if os.path.isfile(value):
        return value, value
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        data = b""
    if not data:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise VideoError(f"no such file, and not base64 video bytes: {shown}", "open")
    return io.BytesIO(data), f"<{len(data)} base64-decoded bytes>"


class VideoClassifier:
    """A trained Keras model and the spec it was trained on, classifying whole videos.

    Args:
        model: a Keras model ``(batch, T, H, W, C) -> (batch, classes)``.
        spec: the ``dataset.json`` the model was trained on.
        batch_size: clips per forward pass.

    Raises:
        ContractError: if the model does not take the spec's clips or ``sampling`` is unusable.
    """

    def __init__(self, model: Any, spec: DatasetSpec, batch_size: int = CLIP_BATCH):
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

    @classmethod
    def from_files(cls, model_path: str, dataset_json: str) -> VideoClassifier:
        """Loads ``model.keras`` and its ``dataset.json``."""
        import keras

        with open(dataset_json, encoding="utf-8") as handle:
            spec = DatasetSpec.from_json(handle.read(), source=dataset_json)
        return cls(keras.saving.load_model(model_path, compile=False), spec)

    @classmethod
    def from_dir(cls, model_dir: str) -> VideoClassifier:
        """Loads a training output directory (``model.keras`` + ``dataset.json``).

        Raises:
            FileNotFoundError: naming the missing file.
        """
        return cls.from_files(*model_files(model_dir))

    def classify(self, source: Any, name: str = "") -> dict[str, Any]:
        """Classifies one video (a path or a binary file object).

        Returns:
            ``{"label": str, "probabilities": {class: p}, "clips": n}``; probabilities are
            the mean over the video's clips.

        Raises:
            VideoError: if the video cannot be decoded into clips.
        """
        total = np.zeros(self.spec.num_classes, np.float64)
        count = 0
        batch: list[np.ndarray] = []
        for frames in self.clip_arrays(source, name):
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

    def clip_arrays(self, source: Any, name: str = "") -> Iterator[np.ndarray]:
        """The video's clips exactly as training saw them: float32 ``(T, H, W, C)`` in [0, 1].

        Clips come from :func:`pipeline.video.iter_clips` with the records' preprocessing; each
        is serialised with :func:`pipeline.records.encode_clip` and decoded by
        :func:`training.data.parse_clip`, the tf.data parser of training, because TensorFlow's
        JPEG decoder (``INTEGER_FAST`` DCT) differs by a few levels from Pillow's.

        Raises:
            VideoError: if the video cannot be decoded into clips.
        """
        import tensorflow as tf

        from training.data import parse_clip

        timeout = self.preprocess.video_timeout_s
        for clip in iter_clips(source, self.preprocess, name=name, timeout_s=timeout):
            serialized = records.encode_clip(
                clip.frames, 0, self.spec.classes[0], name or "video", clip.frame_indices, clip.timestamps
            )
            frames = parse_clip(tf.constant(serialized), self.spec)["clip"]
            yield tf.image.convert_image_dtype(frames, tf.float32).numpy()  # as training.data

    def _predict(self, batch: list[np.ndarray]) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(np.stack(batch)), dtype=np.float64)

    def classify_value(self, value: Any) -> dict[str, Any]:
        """Classifies one ``video`` cell; a bad video gives ``error`` instead of raising.

        Returns:
            ``{"label", "probabilities", "clips", "error"}``: ``error`` is ``None`` on
            success, else ``"<stage>: <reason>"`` with the other fields ``None``.
        """
        try:
            source, name = open_video(value)
            return {**self.classify(source, name), "error": None}
        except VideoError as exc:
            logger.info("video %s: %s (%s)", _short(value), exc.reason, exc.stage)
            return {"label": None, "probabilities": None, "clips": None, "error": f"{exc.stage}: {exc.reason}"}
        except OSError as exc:  # e.g. a path that exists but cannot be read
            return {"label": None, "probabilities": None, "clips": None, "error": f"open: {exc}"}


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

    Artifacts: ``keras_model`` (``model.keras``) and ``dataset`` (its ``dataset.json``).
    """

    def load_context(self, context: Any) -> None:
        self.classifier = VideoClassifier.from_files(context.artifacts["keras_model"], context.artifacts["dataset"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Classifies every row; returns a DataFrame with :data:`OUTPUT_COLUMNS`.

        ``model_input`` is a DataFrame when served; a dict of columns, a list or a single
        path or base64 string also work in-process.
        """
        rows = [self.classifier.classify_value(value) for value in _video_values(model_input)]
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
    those packages install.

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
            pip_requirements=pinned_requirements("tensorflow", "keras", "av", "numpy", "pandas", "pillow", "pyyaml"),
        )

