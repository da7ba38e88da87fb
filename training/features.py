"""The frozen-feature path: each clip's per-frame features, computed once per split and cached on disk.

With a frozen pretrained backbone the per-frame features of a clip never change, so training
the head end to end would repeat the backbone's pass over every frame each epoch. Instead
:func:`split_features` runs the model's ``features`` part (:func:`training.model.split_model`)
once over a split, batched (tf.data decodes and prefetches the next batches on all cores while
the backbone runs), and keeps the result in ``train.feature_cache`` as ``<key>.npz``
(``features`` float32 ``(clips, T, F)``, ``labels``, ``video_ids``). The key is a SHA-256 of
what the features depend on: the records' clip format (``dataset.json``: shape, encoding,
classes), the split's shard files (names and contents), and the feature model (its
configuration and every weight, so the backbone, its weights file or ImageNet download, and
the frames' scaling). Anything else changing gives another key; nothing is ever stale.

Augmentation does not apply here: the features are of the clips as recorded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from typing import Any

import numpy as np

from pipeline.records import DatasetSpec
from training.shards import shard_files

logger = logging.getLogger(__name__)

CLIPS_PER_BATCH = 8
"""Clips per backbone batch: 8 clips of 16 frames are 128 frames per call."""


def model_digest(model: Any) -> str:
    """SHA-256 of a Keras model's configuration and weights (what its outputs depend on)."""
    digest = hashlib.sha256(json.dumps(model.get_config(), sort_keys=True, default=str).encode())
    for weight in model.weights:
        digest.update(weight.path.encode())
        digest.update(np.ascontiguousarray(np.asarray(weight.numpy())).tobytes())
    return digest.hexdigest()


def records_digest(records_dir: str, split: str, spec: DatasetSpec) -> str:
    """SHA-256 of a split's shards (names and contents) and of the records' clip format."""
    from pipeline import storage

    fmt = {"clip_shape": list(spec.clip_shape), "frame_encoding": spec.frame_encoding, "classes": list(spec.classes)}
    digest = hashlib.sha256(json.dumps(fmt, sort_keys=True).encode())
    for path in shard_files(records_dir, split, spec):
        digest.update(os.path.basename(path).encode())
        with storage.open_read(path) as handle:  # local, gs:// and s3:// alike
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def cache_key(records_dir: str, split: str, spec: DatasetSpec, feature_model: Any) -> str:
    """The cache key of a split's features: records and feature model together."""
    return hashlib.sha256(
        f"{records_digest(records_dir, split, spec)}:{model_digest(feature_model)}".encode()
    ).hexdigest()[:32]


def split_features(
    records_dir: str, split: str, spec: DatasetSpec, feature_model: Any, cache_dir: str | None
) -> dict[str, np.ndarray]:
    """The per-frame features of every clip of ``split``, from the cache or computed (and cached).

    Args:
        records_dir: the records (local, ``gs://``, ``s3://``).
        split: ``train``, ``val`` or ``test``.
        spec: the records' ``dataset.json``.
        feature_model: clips ``(batch, T, H, W, C)`` -> features ``(batch, T, F)``.
        cache_dir: ``train.feature_cache``; ``None``: compute, cache nothing.

    Returns:
        ``{"features": float32 (clips, T, F), "labels": int32 (clips,), "video_ids": object (clips,)}``
        in the records' order.
    """
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{split}-{cache_key(records_dir, split, spec, feature_model)}.npz")
        if os.path.exists(path):
            with np.load(path, allow_pickle=False) as cached:
                found = {"features": cached["features"], "labels": cached["labels"],
                         "video_ids": cached["video_ids"].astype(object)}  # fmt: skip
            logger.info("%s: %d clips' features from the cache %s", split, len(found["labels"]), path)
            return found
    found = compute_features(records_dir, split, spec, feature_model)
    if path:
        _write_npz(path, found)
        size = os.path.getsize(path) / 2**20
        logger.info("%s: cached the features in %s (%.1f MiB)", split, path, size)
    return found


def compute_features(records_dir: str, split: str, spec: DatasetSpec, feature_model: Any) -> dict[str, np.ndarray]:
    """Runs ``feature_model`` over a split's clips, batched, decoding ahead on all cores."""
    from training.data import make_dataset
    from training.shards import reading_records

    ds = make_dataset(records_dir, split, spec, CLIPS_PER_BATCH, with_video_id=True)
    features, labels, video_ids = [], [], []
    start, waited = time.perf_counter(), 0.0
    with reading_records(records_dir, spec, split):
        iterator = ds.as_numpy_iterator()
        while True:
            before = time.perf_counter()
            batch = next(iterator, None)
            waited += time.perf_counter() - before
            if batch is None:
                break
            clips, batch_labels, batch_ids = batch
            features.append(np.asarray(feature_model.predict_on_batch(clips), dtype=np.float32))
            labels.append(batch_labels)
            video_ids.extend(v.decode("utf-8") for v in batch_ids)
    seconds = time.perf_counter() - start
    out = {
        "features": np.concatenate(features),
        "labels": np.concatenate(labels).astype(np.int32),
        "video_ids": np.asarray(video_ids, dtype=object),
    }
    frames = out["features"].shape[0] * spec.sequence_length
    logger.info(
        "%s: features of %d clips (%d frames) in %.1fs, %.1f frames/s (%.1fs of it waiting for decoded clips)",
        split, len(out["labels"]), frames, seconds, frames / max(seconds, 1e-9), waited,
    )  # fmt: skip
    return out


def _write_npz(path: str, found: dict[str, np.ndarray]) -> None:
    """Writes atomically: a killed run leaves no half-written cache entry behind."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
    os.close(handle)
    try:
        with open(scratch, "wb") as out:  # a file object: np.savez would append .npz to a name
            np.savez(out, features=found["features"], labels=found["labels"], video_ids=found["video_ids"].astype(str))
        os.replace(scratch, path)
    finally:
        if os.path.exists(scratch):
            os.remove(scratch)
