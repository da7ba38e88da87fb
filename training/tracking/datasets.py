"""The records as MLflow datasets: one per split, named, digested by their DVC hash, profiled.

``mlflow.log_input`` records a dataset as an input of the run, so the runs table's *Dataset*
column and the run page show what a model was trained and evaluated on. Each split is one
dataset (MLflow keeps one input per (name, digest) and run, so contexts need distinct names):

* name ``<dataset>-<split>`` (``demo-train``), context ``training`` / ``validation`` / ``evaluation``;
* digest: the records' DVC hash (``vidseq.records.dvc_md5``, see :mod:`training.tracking.lineage`);
* source: the records directory;
* schema: the fields of one record (``frames`` as T encoded images, ``label``, ...);
* profile: clip shape, classes, clips and videos of the split and of each class in it.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import warnings
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.data.meta_dataset import MetaDataset
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

from pipeline import records
from pipeline.records import DatasetSpec

logger = logging.getLogger(__name__)

CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}
_NO_HASH = "unhashed"


def split_counts(records_dir: str, spec: DatasetSpec, split: str) -> dict[str, Any]:
    """Clips and videos of ``split``, in all and per class, read from the shards (labels only).

    Returns:
        ``{"clips", "videos", "classes": {name: {"clips", "videos"}}}``; every class appears.
    """
    import tensorflow as tf

    from training.shards import reading_records, record_dataset, shard_files

    features = {
        records.LABEL: tf.io.FixedLenFeature([], tf.int64),
        records.VIDEO_ID: tf.io.FixedLenFeature([], tf.string),
    }
    files = shard_files(records_dir, split, spec)
    ds = record_dataset(files, spec).batch(1024)  # local, gs:// and s3:// alike
    clips: collections.Counter[int] = collections.Counter()
    videos: dict[int, set[str]] = collections.defaultdict(set)
    with reading_records(records_dir, spec, split):
        for batch in ds:
            parsed = tf.io.parse_example(batch, features)
            for label, video in zip(parsed[records.LABEL].numpy().tolist(), parsed[records.VIDEO_ID].numpy().tolist()):
                clips[label] += 1
                videos[label].add(video)
    per_class = {
        name: {"clips": clips.get(i, 0), "videos": len(videos.get(i, ()))} for i, name in enumerate(spec.classes)
    }
    return {
        "clips": sum(clips.values()),
        "videos": sum(c["videos"] for c in per_class.values()),
        "classes": per_class,
    }


def records_profile(records_dir: str, spec: DatasetSpec) -> dict[str, dict[str, Any]]:
    """:func:`split_counts` of every split ``dataset.json`` counts clips in."""
    return {
        split: split_counts(records_dir, spec, split)
        for split in records.SPLITS
        if spec.splits.get(split, {}).get("clips")
    }


def record_schema(spec: DatasetSpec) -> Schema:
    """The fields of one record, as MLflow columns (what a reader of the shards gets)."""
    return Schema([
        ColSpec(Array(DataType.binary), records.FRAMES),
        ColSpec(DataType.long, records.LABEL),
        ColSpec(DataType.string, records.LABEL_NAME),
        ColSpec(DataType.string, records.VIDEO_ID),
        ColSpec(Array(DataType.long), records.FRAME_INDICES),
        ColSpec(Array(DataType.double), records.TIMESTAMPS),
    ])  # fmt: skip


class RecordsDataset(MetaDataset):
    """A split of a records directory: metadata only (the shards stay where they are), with a profile."""

    def __init__(self, *, source: Any, name: str, digest: str, schema: Schema, profile: Mapping[str, Any]):
        self._profile = dict(profile)
        super().__init__(source=source, name=name, digest=digest, schema=schema)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self._profile)
        return config


def _source(records_dir: str) -> Any:
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    uri = records_dir if "://" in records_dir else os.path.abspath(records_dir)
    with warnings.catch_warnings():  # a local path matches MLflow's local source under two schemes: same source
        warnings.simplefilter("ignore", UserWarning)
        return resolve_dataset_source(uri)


def split_dataset(
    records_dir: str, spec: DatasetSpec, split: str, counts: Mapping[str, Any], *, name: str, digest: str | None
) -> RecordsDataset:
    """The dataset of one split (see the module docstring)."""
    t, h, w, c = spec.clip_shape
    profile = {
        "split": split,
        "clip_shape": f"{t}x{h}x{w}x{c} (T frames x H x W x C)",
        "frame_encoding": spec.frame_encoding,
        "fps": spec.sampling.get("fps"),
        "classes": list(spec.classes),
        "clips": counts["clips"],
        "videos": counts["videos"],
        "per_class": counts["classes"],
    }
    return RecordsDataset(
        source=_source(records_dir), name=f"{name}-{split}", digest=digest or _NO_HASH,
        schema=record_schema(spec), profile=profile,
    )  # fmt: skip


def log_records_inputs(
    records_dir: str,
    spec: DatasetSpec,
    splits: tuple[str, ...],
    *,
    name: str,
    digest: str | None,
    profile: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, RecordsDataset]:
    """Logs each of ``splits`` as an input of the active run, with its context.

    Returns:
        ``{split: dataset}`` of the splits logged (a split without clips is skipped; none when
        the records are not there, e.g. a run backfilled by register on another machine).
    """
    if profile is None:
        from vidseq.errors import VidseqError

        try:
            profile = records_profile(records_dir, spec)
        except (VidseqError, FileNotFoundError) as exc:  # the shards are gone: the run simply lists no inputs
            logger.info("records %s not readable, no dataset inputs logged: %s", records_dir, exc)
            return {}
    logged = {}
    for split in splits:
        if split not in profile:
            continue
        dataset = split_dataset(records_dir, spec, split, profile[split], name=name, digest=digest)
        mlflow.log_input(dataset, context=CONTEXTS.get(split, split))
        logged[split] = dataset
    return logged
