"""The tf.data input pipeline: record shards -> batches of ``(clips, labels)`` with static shapes.

Records are parsed with :func:`pipeline.records.tf_feature_spec`, the one statement of the
format. Clips come out as float32 ``(T, H, W, C)`` in [0, 1]; scaling beyond that
(``model.normalization``) happens inside the model, so the saved model carries it and
predict/serve feed the same [0, 1] frames. Augmentations draw their random parameters once
per clip and apply them to every frame alike, so frames stay aligned and motion is intact.

This module also holds the shape contract between data and model (:func:`check_compatible`);
finding and counting shards, and naming a damaged one, is :mod:`training.shards`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.records import ContractError, DatasetSpec

from training.shards import compression_type, shard_files
from vidseq.params import AugmentConfig


logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


def parse_clip(serialized: tf.Tensor, spec: DatasetSpec) -> dict[str, tf.Tensor]:
    """Parses one serialised clip and decodes its frames.

    Returns:
        ``{"clip": uint8 (T, H, W, C), "label": int32 (), "video_id": string ()}``.
    """
    t, h, w, c = spec.clip_shape
    features = tf.io.parse_single_example(serialized, records.tf_feature_spec(t))
    decode = tf.io.decode_png if spec.frame_encoding == "png" else tf.io.decode_jpeg
    frames = []
    for i in range(t):  # T is static: unrolled, each decode runs in the parallel map
        frame = decode(features[records.FRAMES][i], channels=c)
        check = tf.debugging.assert_equal(
            tf.shape(frame),
            tf.constant([h, w, c]),
            message=f"a frame's size differs from dataset.json's (H, W, C) = {(h, w, c)}: re-run preprocessing",
        )
        with tf.control_dependencies([check]):
            frames.append(tf.ensure_shape(tf.identity(frame), (h, w, c)))
    return {
        "clip": tf.stack(frames),
        "label": tf.cast(features[records.LABEL][0], tf.int32),
        "video_id": features[records.VIDEO_ID][0],
    }


# --------------------------------------------------------------------------- augmentation


def augment_clip(clip: tf.Tensor, cfg: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Applies ``cfg``'s augmentations with one set of random parameters for the whole clip.

    Args:
        clip: float32 ``(T, H, W, C)`` in [0, 1].
        cfg: which augmentations, how strong.
        seed: int ``[2]`` seed of the stateless random ops (one per clip).

    Returns:
        The augmented clip, same shape, clipped to [0, 1]. Every frame gets the same crop
        window, brightness delta, contrast factor and flip.
    """
    t, h, w, _ = clip.shape
    size_seed, offset_seed, bright_seed, contrast_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    if cfg.crop_min_fraction < 1.0:
        size = tf.random.stateless_uniform([2], size_seed, cfg.crop_min_fraction, 1.0)
        offset = tf.random.stateless_uniform([2], offset_seed, 0.0, 1.0) * (1.0 - size)
        box = tf.concat([offset, offset + size], axis=0)  # [y1, x1, y2, x2], normalised
        clip = tf.image.crop_and_resize(
            clip, tf.tile(box[None], [t, 1]), tf.range(t, dtype=tf.int32), (h, w), method="bilinear"
        )
    if cfg.brightness > 0:
        clip = clip + tf.random.stateless_uniform([], bright_seed, -cfg.brightness, cfg.brightness)
    if cfg.contrast > 0:
        factor = tf.random.stateless_uniform([], contrast_seed, 1.0 - cfg.contrast, 1.0 + cfg.contrast)
        mean = tf.reduce_mean(clip, axis=(0, 1, 2), keepdims=True)  # one mean for the whole clip
        clip = (clip - mean) * factor + mean
    if cfg.horizontal_flip:
        flip = tf.random.stateless_uniform([], flip_seed) < 0.5
        clip = tf.cond(flip, lambda: tf.reverse(clip, axis=[2]), lambda: clip)
    return tf.clip_by_value(clip, 0.0, 1.0)


# --------------------------------------------------------------------------- datasets


def make_dataset(
    records_dir: str,
    split: str,
    spec: DatasetSpec,
    batch_size: int,
    *,
    training: bool = False,
    augment: AugmentConfig | None = None,
    seed: int | None = None,
    shuffle_buffer: int = 1024,
    cache: bool = False,
    with_video_id: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches of clips from a split's shards.

    Args:
        records_dir: the directory holding ``dataset.json`` and the shards.
        split: ``train``, ``val`` or ``test``.
        spec: the records' :class:`DatasetSpec` (``read_spec(records_dir)``).
        batch_size: clips per batch.
        training: shuffle shards and clips (reshuffled each epoch) and apply ``augment``.
        augment: augmentations (training only); ``None`` for none.
        seed: seeds shuffling and augmentation.
        shuffle_buffer: clips in the shuffle buffer.
        cache: cache decoded uint8 clips in memory (before augmentation).
        with_video_id: yield ``(clips, labels, video_ids)`` for evaluation.
        drop_remainder: drop the last partial batch (makes the batch axis static).

    Returns:
        A dataset whose ``element_spec`` is ``((None, T, H, W, C) float32, (None,) int32)``
        (plus ``(None,) string`` video ids with ``with_video_id``).

    Iterate it inside :func:`reading_records` so that a damaged shard is one clear error.

    Raises:
        EmptySplitError: if the split has no clips.
    """
    files = shard_files(records_dir, split, spec)
    compression = compression_type(spec)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(files), 8),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = ds.map(lambda x: parse_clip(x, spec), num_parallel_calls=AUTOTUNE)
    counted = spec.splits.get(split, {}).get("clips")
    if counted:  # a known length lets Keras show steps and size schedules
        ds = ds.apply(tf.data.experimental.assert_cardinality(int(counted)))
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if training and augment is not None and augment.enabled:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda ex, s: {**ex, "clip": augment_clip(_to_float(ex["clip"]), augment, s)},
            num_parallel_calls=AUTOTUNE,
        )
    else:
        ds = ds.map(lambda ex: {**ex, "clip": _to_float(ex["clip"])}, num_parallel_calls=AUTOTUNE)
    if with_video_id:
        ds = ds.map(lambda ex: (ex["clip"], ex["label"], ex["video_id"]))
    else:
        ds = ds.map(lambda ex: (ex["clip"], ex["label"]))
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def _to_float(clip: tf.Tensor) -> tf.Tensor:
    return tf.image.convert_image_dtype(clip, tf.float32)  # uint8 -> [0, 1]


# --------------------------------------------------------------------------- shape contract


def model_clip_shape(model: Any) -> tuple[int | None, ...]:
    """The ``(T, H, W, C)`` a Keras model takes (its input shape without the batch axis)."""
    return tuple(model.input_shape[1:])


def data_clip_shape(data: Any) -> tuple[int | None, ...]:
    """The per-clip shape of ``data``.

    Args:
        data: a :class:`DatasetSpec` (its ``clip_shape``), a batched ``tf.data.Dataset``
            (its first component, without the batch axis), or a batch (array or tensor)
            shaped ``(batch, ...)``.
    """
    if isinstance(data, DatasetSpec):
        return data.clip_shape
    if isinstance(data, tf.data.Dataset):
        element = data.element_spec
        first = element[0] if isinstance(element, Sequence) else element
        return tuple(first.shape[1:])
    return tuple(np.shape(data)[1:])


def check_compatible(model: Any, data: Any, spec: DatasetSpec | None = None) -> None:
    """Checks that ``data`` fits ``model`` before training, evaluating or predicting.

    Args:
        model: a Keras model taking ``(batch, T, H, W, C)``.
        data: see :func:`data_clip_shape`.
        spec: when given, also checks the model outputs ``spec.num_classes`` classes.

    Raises:
        ContractError: naming both shapes and the fix; a batch of single images
            (4-D data) gets the "time axis is missing" error.
    """
    records.check_clip_shape(data_clip_shape(data), model_clip_shape(model), "the model")
    if spec is not None:
        outputs = model.output_shape[-1]
        if outputs != spec.num_classes:
            raise ContractError(
                f"records have {spec.num_classes} classes {list(spec.classes)} but the model outputs "
                f"{outputs}: rebuild the model from this dataset.json (python -m training.train)"
            )
