"""The tf.data input pipeline: record shards -> batches of ``(clips, labels)`` with static shapes.

Records are parsed with :func:`pipeline.records.tf_feature_spec`, the one statement of the
format. Clips come out as float32 ``(T, H, W, C)`` in [0, 1]; scaling beyond that
(``model.normalization``) happens inside the model, so the saved model carries it and
predict/serve feed the same [0, 1] frames. Augmentations draw their random parameters once
per clip and apply them to every frame alike, so frames stay aligned and motion is intact.

This module also holds the shape contract between data and model (:func:`check_compatible`) and
turns a damaged shard into one error naming the file and the record (:func:`reading_records`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.records import ContractError, DatasetSpec

from training.config import AugmentConfig

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


class EmptySplitError(ValueError):
    """A split that a stage needs has no clips (or no shard files)."""


class DamagedRecordsError(ValueError):
    """A shard cannot be read: a record fails its CRC, the file is truncated, or its gzip stream is broken."""


# --------------------------------------------------------------------------- shards


def shard_files(records_dir: str, split: str, spec: DatasetSpec) -> list[str]:
    """The shard files of ``split``, sorted.

    Raises:
        EmptySplitError: if ``dataset.json`` counts no clips for the split or no shard exists.
    """
    pattern = os.path.join(records_dir, records.shard_pattern(split, spec.compressed))
    files = sorted(tf.io.gfile.glob(pattern))
    counted = spec.splits.get(split, {}).get("clips")
    if not files or counted == 0:
        raise EmptySplitError(
            f"split {split!r} has no clips in {records_dir} (dataset.json counts {counted}, "
            f"{len(files)} shard file(s) match {os.path.basename(pattern)}): give preprocessing more videos "
            "or change preprocess.splits so every split gets some"
        )
    return files


def count_clips(records_dir: str, split: str, spec: DatasetSpec) -> int:
    """Clips in ``split``: from ``dataset.json`` when it counts them, else by reading the shards."""
    files = shard_files(records_dir, split, spec)
    counted = spec.splits.get(split, {}).get("clips")
    if counted:
        return int(counted)
    with reading_records(records_dir, spec, split):
        return int(sum(1 for _ in tf.data.TFRecordDataset(files, compression_type=_compression(spec))))


def _compression(spec: DatasetSpec) -> str:
    return "GZIP" if spec.compressed else ""


# --------------------------------------------------------------------------- damaged shards

_FRAMING_BYTES = 16  # per record: 8-byte length, 4-byte CRC of the length, the data, 4-byte CRC of the data
_TF_DAMAGE = re.compile(r"(corrupted|truncated) record at \d+|inflate\(\) failed[^\[]*")


def scan_shard(path: str, compressed: bool = False) -> tuple[int, str | None]:
    """Reads one shard to its end with TensorFlow's CRC-checking reader.

    Returns:
        ``(records read, damage)``: ``damage`` is ``None`` if the whole file reads, else where
        and how the first unreadable record is damaged: ``record #N at byte B is corrupted
        (CRC mismatch)`` (flipped bytes in a length or a payload), ``... is truncated (the
        file ends inside it)``, or for a gzip shard ``...: the gzip stream is broken
        (inflate() failed ...)``. ``B`` is where the record starts (in the decompressed
        stream of a gzip shard).
    """
    index = offset = 0
    lengths = tf.data.TFRecordDataset(path, compression_type="GZIP" if compressed else "").map(tf.strings.length)
    try:
        for length in lengths.as_numpy_iterator():
            index += 1
            offset += int(length) + _FRAMING_BYTES
    except tf.errors.DataLossError as exc:
        where = f"record #{index} at byte {offset}{' of the decompressed stream' if compressed else ''}"
        message = (exc.message or "").strip()
        found = _TF_DAMAGE.search(message)
        kind = found.group(0).strip() if found else (message.splitlines() or ["unknown data loss"])[0]
        if kind.startswith("corrupted"):
            return index, f"{where} is corrupted (CRC mismatch)"
        if kind.startswith("truncated"):
            return index, f"{where} is truncated (the file ends inside it)"
        return index, f"{where}: the {'gzip stream is broken' if compressed else 'record is unreadable'} ({kind})"
    return index, None


def damage_error(records_dir: str, spec: DatasetSpec, splits: Sequence[str]) -> DamagedRecordsError | None:
    """The one-line error for damaged shards of ``splits``, or ``None`` if they read and count fine.

    Scans every shard of the splits (called only after a read failed, so tf.data runs
    unchecked otherwise) and names the first damaged file and record. A split whose shards
    all read but hold another number of clips than ``dataset.json`` counts (a shard cut at
    a record boundary, a shard replaced) gets an error naming the split and both counts.
    """
    fix = _fix(records_dir)
    damaged: list[str] = []
    miscounted: list[str] = []
    for split in splits:
        clips = 0
        for path in shard_files(records_dir, split, spec):
            read, damage = scan_shard(path, spec.compressed)
            clips += read
            if damage:
                damaged.append(f"{path}: {damage}")
        counted = spec.splits.get(split, {}).get("clips")
        if counted and clips != counted:
            miscounted.append(f"split {split!r} of {records_dir} holds {clips} clips but dataset.json counts {counted}")
    if damaged:
        more = f" (and {len(damaged) - 1} more damaged shard(s))" if len(damaged) > 1 else ""
        return DamagedRecordsError(f"damaged shard {damaged[0]}{more}: {fix}")
    if miscounted:
        return DamagedRecordsError(f"{miscounted[0]} (a shard cut short or replaced): {fix}")
    return None


def _fix(records_dir: str) -> str:
    inspect = f"python -m pipeline.inspect {records_dir}"
    return f"check the records with {inspect} or re-run preprocessing (python -m pipeline)"


@contextlib.contextmanager
def reading_records(records_dir: str, spec: DatasetSpec, *splits: str) -> Iterator[None]:
    """Turns a failed read of ``splits``' shards inside the block into a :class:`DamagedRecordsError`.

    Wrap the code that iterates datasets of these splits (``fit``, a prediction loop):
    tf.data reads at full speed, and only when TensorFlow reports data loss (or fewer clips
    than ``dataset.json`` counts) are the shards scanned to name the damaged file and record.

    Raises:
        DamagedRecordsError: naming the shard file, the record (index and byte offset) and the fix.
    """
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.FailedPreconditionError) as exc:
        error = damage_error(records_dir, spec, splits)
        if error is None and isinstance(exc, tf.errors.DataLossError):  # e.g. a remote read that failed once
            error = DamagedRecordsError(
                f"reading the {'/'.join(splits)} shards of {records_dir} failed ({_tf_message(exc)}) but they read "
                f"fine again: run the command again, or {_fix(records_dir)}"
            )
        if error is None:
            raise
        logger.debug("TensorFlow reported: %s", exc.message)
        raise error from None


def _tf_message(exc: tf.errors.OpError) -> str:
    """TensorFlow's message without its graph-node and op decorations."""
    text = re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\].*", "", exc.message or "", flags=re.S)
    return " ".join(text.split()) or type(exc).__name__


# --------------------------------------------------------------------------- parsing


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
    compression = _compression(spec)
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
