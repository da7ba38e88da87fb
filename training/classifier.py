"""The video classifier: a video in, a label and probabilities out, sampled exactly as in training.

A video is decoded and cut into clips by :func:`pipeline.video.iter_clips` with the
``PreprocessConfig`` stored in the model's ``dataset.json`` (``sampling``), so it is sampled
and encoded exactly as the records the model was trained on; the frames are then decoded and
scaled by training's own tf.data parser (:func:`training.data.parse_clip`), so the model sees
bit-identical input. The model classifies every clip and the clip probabilities are averaged
into the video's.

:class:`VideoClassifier` is used by ``training.predict`` and, wrapped as an MLflow pyfunc, by
the served model (:mod:`training.tracking.pyfunc`); it imports neither MLflow nor Beam.
:mod:`training.limits` caps what a request and a video may cost: a video over a cap gets
``limit: ...`` or ``timeout: ...`` as soon as the cap is hit; :mod:`training.video_input` turns a
served ``video`` cell into something to decode.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline import records
from pipeline.records import ContractError, DatasetSpec
from pipeline.video import DecodeLimits, VideoError, iter_clips
from training.artifacts import model_files
from training.limits import Limits, RequestBudget
from training.model import load_keras_model
from training.video_input import open_video
from vidseq.params import PreprocessConfig
from vidseq.validation import ConfigError, from_mapping

__all__ = ["VideoClassifier", "preprocess_config"]

logger = logging.getLogger(__name__)

CLIP_BATCH = 16


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
        from training.model import traced_call  # one trace for every number of clips a video gives

        return np.asarray(traced_call(self.model)(np.stack(batch)), dtype=np.float64)

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


def _error_row(error: str) -> dict[str, Any]:
    return {"label": None, "probabilities": None, "clips": None, "error": error}


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."
