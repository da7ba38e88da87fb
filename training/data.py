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
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.records import ContractError, DatasetSpec

from training.shards import record_dataset, shard_files
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


DECODED_CACHE_BUDGET = 1 << 30
"""Bytes of decoded (uint8) clips that ``train.cache`` may keep in memory for one split: 1 GiB.

A split whose decoded clips fit is cached decoded, as the demo is; a larger one never is (at
UCF101's size, 13,320 videos x 3 clips of 16x112x112, decoded float32 clips would take about
96 GB): its encoded records are cached in a file under the output folder instead, when they
come from an object store, and are otherwise read from the local shards again each epoch.
"""


def decoded_bytes(spec: DatasetSpec, split: str) -> int:
    """Bytes of one split's clips decoded to uint8 (what a decoded cache would hold)."""
    t, h, w, c = spec.clip_shape
    return int(spec.splits.get(split, {}).get("clips") or 0) * t * h * w * c


def cache_plan(spec: DatasetSpec, split: str, records_dir: str, cache: bool, cache_dir: str | None = None) -> str:
    """How ``train.cache`` caches a split: ``decoded`` (in memory), ``file`` (encoded, under ``cache_dir``) or ``none``.

    ``decoded`` only when the split's decoded clips fit :data:`DECODED_CACHE_BUDGET` (a split
    that ``dataset.json`` does not count is never cached decoded); ``file`` for records on an
    object store when a ``cache_dir`` is given (the first epoch downloads, later ones read the
    local file); else ``none``: local shards are read again each epoch, through the page cache.
    """
    if not cache:
        return "none"
    if 0 < decoded_bytes(spec, split) <= DECODED_CACHE_BUDGET:
        return "decoded"
    if cache_dir and "://" in records_dir:
        return "file"
    return "none"


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
    cache_dir: str | None = None,
    with_video_id: bool = False,
    drop_remainder: bool = False,
    shard: tuple[int, int] | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches of clips from a split's shards.

    Args:
        records_dir: the directory holding ``dataset.json`` and the shards (local, ``gs://``, ``s3://``).
        split: ``train``, ``val`` or ``test``.
        spec: the records' :class:`DatasetSpec` (``read_spec(records_dir)``).
        batch_size: clips per batch.
        training: shuffle shards and clips (reshuffled each epoch) and apply ``augment``.
        augment: augmentations (training only); ``None`` for none.
        seed: seeds shuffling and augmentation.
        shuffle_buffer: clips in the shuffle buffer. Unless the split is cached decoded, the
            buffer holds encoded records (a few KB a frame), decoded after shuffling.
        cache: ``train.cache``, as :func:`cache_plan` decides it.
        cache_dir: where a file cache of encoded records may go (the output folder's).
        with_video_id: yield ``(clips, labels, video_ids)`` for evaluation.
        drop_remainder: drop the last partial batch (makes the batch axis static).
        shard: ``(workers, index)``: this worker's part of the split in a multi-worker run,
            whole shard files (``files[index::workers]``) when there are at least as many files
            as workers, else every ``workers``-th record of all of them.
        repeat: repeat forever (a multi-worker run counts its steps itself).

    Returns:
        A dataset whose ``element_spec`` is ``((None, T, H, W, C) float32, (None,) int32)``
        (plus ``(None,) string`` video ids with ``with_video_id``).

    Iterate it inside :func:`reading_records` so that a damaged shard is one clear error.

    Raises:
        EmptySplitError: if the split has no clips.
    """
    files = shard_files(records_dir, split, spec)
    by_record = None
    if shard is not None and shard[0] > 1:
        workers, index = shard
        if len(files) >= workers:
            files = files[index::workers]
        else:
            by_record = shard
    ds = record_dataset(files, spec, shuffle=training, seed=seed)
    if by_record is not None:
        ds = ds.shard(*by_record)
    plan = cache_plan(spec, split, records_dir, cache, cache_dir)
    counted = spec.splits.get(split, {}).get("clips")
    decode = lambda x: parse_clip(x, spec)  # noqa: E731
    if plan == "decoded":  # small: decode once, keep the uint8 clips (the demo's pipeline)
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
        if counted and shard is None:  # a known length lets Keras show steps and size schedules
            ds = ds.apply(tf.data.experimental.assert_cardinality(int(counted)))
        ds = ds.cache()
        if repeat:
            ds = ds.repeat()
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    else:  # any size: cache and shuffle encoded records, decode after
        if counted and shard is None:
            ds = ds.apply(tf.data.experimental.assert_cardinality(int(counted)))
        if plan == "file":
            ds = ds.cache(_cache_file(cache_dir, split, shard))
        if repeat:
            ds = ds.repeat()
        if training:
            ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE)
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


def _cache_file(cache_dir: str | None, split: str, shard: tuple[int, int] | None) -> str:
    os.makedirs(cache_dir or ".", exist_ok=True)
    part = f"-worker{shard[1]}" if shard else ""
    return os.path.join(cache_dir or ".", f"{split}{part}.records")


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
