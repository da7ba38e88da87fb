"""The frozen-feature path: each clip's per-frame features, computed once and cached on disk, clip by clip.

With a frozen pretrained backbone the per-frame features of a clip never change, so training
the head end to end would repeat the backbone's pass over every frame each epoch. Instead
:func:`split_features` runs the model's ``features`` part (:func:`training.model.split_model`)
over a split, batched (tf.data decodes and prefetches the next batches on all cores while the
backbone runs), and keeps the result in ``train.feature_cache``.

The cache is keyed clip by clip: a clip's key is a SHA-256 of its content (the records' clip
format and its encoded frames, in order), and the clips' features live in a folder named by
the feature model's digest (its configuration and every weight: the backbone, its weights file
or ImageNet download, the frames' scaling and what the backbone sees, frames or their
differences). Anything that changes the features gives another key; nothing is ever stale. A
clip is computed once whatever split or fold it is in: the folds of a cross-validation, the
evaluation of the test split and a re-run after new videos were added compute only the clips
not seen before.

Each run that computes clips adds one *pack* to the model's folder: ``<name>.npy`` (float32
``(clips, steps, features)``) and ``<name>.clips`` (the clips' keys, one a line), both written
atomically, the key list last: a pack without its key list (a killed run) is ignored, and two
runs writing the same pack at once write the same bytes. ``rm -r`` the folder to free the space.

Augmentation: the features are of the clips as recorded, except that ``train.augment.horizontal_flip``
adds each training clip's mirror image (one fixed variant, cached under the clip's key +
:data:`MIRRORED`); crops, brightness and contrast are drawn anew each epoch and do not apply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.records import DatasetSpec

logger = logging.getLogger(__name__)

CLIPS_PER_BATCH = 8
"""Clips per backbone batch: 8 clips of 16 frames are 128 frames per call."""

PACK_KEYS = ".clips"
PACK_FEATURES = ".npy"


def model_digest(model: Any) -> str:
    """SHA-256 of a Keras model's configuration and weights (what its outputs depend on)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
    return digest.hexdigest()


def clip_key(spec: DatasetSpec, frames: Sequence[bytes]) -> str:
    """A clip's cache key: SHA-256 of the clip format and its encoded frames (each with its length)."""
    fmt = {"clip_shape": list(spec.clip_shape), "frame_encoding": spec.frame_encoding}
    digest = hashlib.sha256(json.dumps(fmt, sort_keys=True).encode())
    for frame in frames:
        digest.update(len(frame).to_bytes(8, "big"))
        digest.update(frame)
    return digest.hexdigest()


def split_clips(records_dir: str, split: str, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Each clip of ``split`` in record order, read without decoding its frames.

    Returns:
        ``{"keys": object (clips,) of :func:`clip_key`, "labels": int32 (clips,), "video_ids": object (clips,)}``.
    """
    import tensorflow as tf

    from pipeline import records
    from training.shards import reading_records, record_dataset, shard_files

    feature_spec = records.tf_feature_spec(spec.sequence_length)
    ds = record_dataset(shard_files(records_dir, split, spec), spec).map(
        lambda x: tf.io.parse_single_example(x, feature_spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    keys, labels, video_ids = [], [], []
    with reading_records(records_dir, spec, split):
        for example in ds.as_numpy_iterator():
            keys.append(clip_key(spec, example[records.FRAMES]))
            labels.append(int(example[records.LABEL][0]))
            video_ids.append(example[records.VIDEO_ID][0].decode("utf-8"))
    return {
        "keys": np.asarray(keys, dtype=object),
        "labels": np.asarray(labels, dtype=np.int32),
        "video_ids": np.asarray(video_ids, dtype=object),
    }


class FeatureStore:
    """The cached features of one feature model: ``folder`` holds its packs (see the module's docstring)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._index: dict[str, tuple[str, int]] = {}
        if os.path.isdir(folder):
            for name in sorted(os.listdir(folder)):
                if name.endswith(PACK_KEYS):
                    pack = name[: -len(PACK_KEYS)]
                    with open(os.path.join(folder, name), encoding="utf-8") as handle:
                        for row, key in enumerate(handle.read().split()):
                            self._index.setdefault(key, (pack, row))

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The features of ``keys`` (all in the store), stacked in their order."""
        by_pack: dict[str, list[tuple[int, int]]] = {}
        for i, key in enumerate(keys):
            pack, row = self._index[key]
            by_pack.setdefault(pack, []).append((i, row))
        out: np.ndarray | None = None
        for pack, rows in by_pack.items():
            data = np.load(os.path.join(self.folder, pack + PACK_FEATURES), mmap_mode="r")
            if out is None:
                out = np.empty((len(keys), *data.shape[1:]), np.float32)
            for i, row in rows:
                out[i] = data[row]
        assert out is not None, "get() needs at least one key"
        return out

    def add(self, keys: Sequence[str], features: np.ndarray) -> str:
        """Adds a pack of ``features`` (one row per key); returns its name."""
        os.makedirs(self.folder, exist_ok=True)
        listing = "".join(f"{key}\n" for key in keys)
        pack = hashlib.sha256(listing.encode()).hexdigest()[:32]
        _write_atomic(os.path.join(self.folder, pack + PACK_FEATURES), lambda out: np.save(out, features))
        _write_atomic(os.path.join(self.folder, pack + PACK_KEYS), lambda out: out.write(listing.encode()))
        for row, key in enumerate(keys):
            self._index.setdefault(key, (pack, row))
        return pack


MIRRORED = ":mirrored"
"""Suffix of the cache key of a clip's mirror image (:func:`split_features` ``mirrored``)."""


def mirror(clips: np.ndarray) -> np.ndarray:
    """Clips ``(batch, T, H, W, C)`` flipped left to right."""
    return clips[:, :, :, ::-1]


def split_features(
    records_dir: str, split: str, spec: DatasetSpec, feature_model: Any, cache_dir: str | None,
    *, mirrored: bool = False,
) -> dict[str, np.ndarray]:  # fmt: skip
    """The per-frame features of every clip of ``split``: cached clips read, the others computed (and cached).

    Args:
        records_dir: the records (local, ``gs://``, ``s3://``).
        split: ``train``, ``val`` or ``test``.
        spec: the records' ``dataset.json``.
        feature_model: clips ``(batch, T, H, W, C)`` -> features ``(batch, steps, F)``.
        cache_dir: ``train.feature_cache``; ``None``: compute, cache nothing.
        mirrored: the features of the clips flipped left to right (``train.augment.horizontal_flip``),
            cached under the clip's key + :data:`MIRRORED`.

    Returns:
        ``{"features": float32 (clips, steps, F), "labels": int32 (clips,), "video_ids": object (clips,)}``
        in the records' order.
    """
    variants = {"features": mirror if mirrored else None}
    if not cache_dir:
        return compute_features(records_dir, split, spec, feature_model, variants=variants)
    clips = split_clips(records_dir, split, spec)
    folder = os.path.join(cache_dir, model_digest(feature_model)[:32])
    store = FeatureStore(folder)
    keys = [key + MIRRORED if mirrored else key for key in clips["keys"]]
    missing = [i for i, key in enumerate(keys) if key not in store]
    if missing:
        keep = np.zeros(len(keys), bool)
        keep[missing] = True
        found = compute_features(records_dir, split, spec, feature_model, keep=keep, variants=variants)
        if list(found["video_ids"]) != [clips["video_ids"][i] for i in missing]:
            raise RuntimeError(f"the {split} records changed while their features were computed: run it again")
        store.add([keys[i] for i in missing], found["features"])
    features = store.get(keys)
    logger.info(
        "%s: %d %sclips' features, %d from the cache %s, %d computed", split, len(keys),
        "mirrored " if mirrored else "", len(keys) - len(missing), folder, len(missing),
    )  # fmt: skip
    return {"features": features, "labels": clips["labels"], "video_ids": clips["video_ids"]}


def compute_features(
    records_dir: str,
    split: str,
    spec: DatasetSpec,
    feature_model: Any,
    *,
    keep: np.ndarray | None = None,
    variants: Mapping[str, Callable[[np.ndarray], np.ndarray] | None] | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``feature_model`` over a split's clips, batched, decoding ahead on all cores.

    Args:
        keep: bool per clip in record order: only these clips are decoded and run (default: all).
        variants: ``{name: clips -> clips, or None for the clips as recorded}``: the features
            of each batch so transformed (e.g. frames shuffled in time), returned under
            ``name``; default ``{"features": None}``.

    Returns:
        ``{"labels", "video_ids"}`` and one float32 array ``(clips, steps, F)`` per variant, of the clips run.
    """
    import tensorflow as tf

    from training.data import parse_clip
    from training.model import traced_call
    from training.shards import reading_records, record_dataset, shard_files

    ds = record_dataset(shard_files(records_dir, split, spec), spec)
    if keep is not None:
        mask = tf.constant(np.asarray(keep, bool))
        ds = ds.enumerate().filter(lambda i, _: tf.gather(mask, i)).map(lambda _, record: record)
    ds = ds.map(lambda x: parse_clip(x, spec), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda ex: (tf.image.convert_image_dtype(ex["clip"], tf.float32), ex["label"], ex["video_id"]))
    ds = ds.batch(CLIPS_PER_BATCH).prefetch(2)
    variants = dict(variants or {"features": None})
    names = tuple(variants)
    out: dict[str, list[Any]] = {name: [] for name in (*names, "labels", "video_ids")}
    run = traced_call(feature_model)
    start, waited = time.perf_counter(), 0.0
    with reading_records(records_dir, spec, split):
        iterator = iter(ds)
        while True:
            before = time.perf_counter()
            batch = next(iterator, None)
            waited += time.perf_counter() - before
            if batch is None:
                break
            clips, labels, video_ids = batch
            for name, transform in variants.items():
                changed = clips if transform is None else tf.constant(transform(clips.numpy()))
                out[name].append(run(changed).numpy().astype(np.float32, copy=False))
            out["labels"].append(labels.numpy())
            out["video_ids"].extend(v.decode("utf-8") for v in video_ids.numpy())
    seconds = time.perf_counter() - start
    if not out["labels"]:
        empty = np.zeros((0, 0, 0), np.float32)
        return {**{name: empty for name in names}, "labels": np.zeros(0, np.int32), "video_ids": np.zeros(0, object)}
    found = {name: np.concatenate(out[name]) for name in names}
    found["labels"] = np.concatenate(out["labels"]).astype(np.int32)
    found["video_ids"] = np.asarray(out["video_ids"], dtype=object)
    frames = len(found["labels"]) * spec.sequence_length * len(names)
    logger.info(
        "%s: features of %d clips (%d frames) in %.1fs, %.1f frames/s (%.1fs of it waiting for decoded clips)",
        split, len(found["labels"]), frames, seconds, frames / max(seconds, 1e-9), waited,
    )  # fmt: skip
    return found


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
    """Writes ``path`` through a temporary file and a rename: a killed run leaves no half-written file."""
    folder = os.path.dirname(path) or "."
    handle, scratch = tempfile.mkstemp(dir=folder, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            write(out)
        os.chmod(scratch, 0o644)
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.remove(scratch)
