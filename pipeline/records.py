"""The record contract between stages: feature keys, clip encoding, parse spec and dataset.json.

Both the writer (the Beam job) and every reader (tf.data in training, tfrecord-lite in
``pipeline.inspect``, predict) import this module, so the format is stated exactly once.

One ``tf.train.Example`` per clip:

==================  ===========  =====================================================
key                 type         meaning
==================  ===========  =====================================================
``frames``          bytes × T    T encoded frames (JPEG or PNG), H×W×C, in time order
``label``           int64 × 1    index into ``DatasetSpec.classes``
``label_name``      bytes × 1    class name
``video_id``        bytes × 1    source video path relative to the input root
``frame_indices``   int64 × T    source frame number of each frame
``timestamps``      float × T    source time in seconds of each frame
==================  ===========  =====================================================

The encoder writes protobuf wire format directly (``tf.train.Example`` is a tiny, frozen
message), so Beam workers do not import TensorFlow; round-trip tests check it against
``tf.io.parse_single_example`` and ``tfrecord_lite.decode_example``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from vidseq.errors import VidseqError

FORMAT_VERSION = 1
#: ``dataset.json``'s ``format`` value: marks a folder as a records output that the job wrote
#: (and so may replace). An older ``dataset.json`` without the key, written before the marker
#: existed, is still read and still counts as a records output if it is otherwise valid.
FORMAT_MARKER = "vidseq-records"

FRAMES = "frames"
LABEL = "label"
LABEL_NAME = "label_name"
VIDEO_ID = "video_id"
FRAME_INDICES = "frame_indices"
TIMESTAMPS = "timestamps"
FEATURE_KEYS = (FRAMES, LABEL, LABEL_NAME, VIDEO_ID, FRAME_INDICES, TIMESTAMPS)

FRAME_ENCODINGS = ("jpeg", "png")
SPLITS = ("train", "val", "test")
DATASET_JSON = "dataset.json"
ERRORS_JSONL = "errors.jsonl"
SHARD_SUFFIX = ".tfrecord"


class ContractError(VidseqError, ValueError):
    """Data does not match the record contract (shape, version, keys)."""


# --------------------------------------------------------------------------- encoding


def _varint(value: int) -> bytes:
    if value < 0:  # int64 negatives are 10-byte two's complement varints
        value += 1 << 64
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(values: Sequence[bytes]) -> bytes:
    bytes_list = b"".join(_field(1, v) for v in values)
    return _field(1, bytes_list)  # Feature.bytes_list = 1


def _float_feature(values: Sequence[float]) -> bytes:
    packed = struct.pack(f"<{len(values)}f", *values)
    return _field(2, _field(1, packed) if values else b"")  # Feature.float_list = 2


def _int64_feature(values: Sequence[int]) -> bytes:
    packed = b"".join(_varint(int(v)) for v in values)
    return _field(3, _field(1, packed) if values else b"")  # Feature.int64_list = 3


def _example(features: Mapping[str, bytes]) -> bytes:
    entries = b"".join(
        _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))  # map entry
        for key, feature in sorted(features.items())
    )
    return _field(1, entries)  # Example.features = 1, Features.feature = 1 (map)


def encode_clip(
    frames: Sequence[bytes],
    label: int,
    label_name: str,
    video_id: str,
    frame_indices: Sequence[int],
    timestamps: Sequence[float],
) -> bytes:
    """Serialises one clip as a ``tf.train.Example``.

    Args:
        frames: T encoded images (JPEG or PNG bytes), in time order.
        label: class index into ``DatasetSpec.classes``.
        label_name: the class name.
        video_id: the source video's path relative to the input root.
        frame_indices: source frame number of each of the T frames.
        timestamps: source time in seconds of each of the T frames.

    Returns:
        The serialised Example.

    Raises:
        ContractError: if the per-frame lists do not all have length T.
    """
    t = len(frames)
    if t == 0 or len(frame_indices) != t or len(timestamps) != t:
        raise ContractError(
            f"clip of {video_id!r} has {t} frames, {len(frame_indices)} frame indices and "
            f"{len(timestamps)} timestamps: all three must equal sequence_length"
        )
    return _example(
        {
            FRAMES: _bytes_feature(list(frames)),
            LABEL: _int64_feature([label]),
            LABEL_NAME: _bytes_feature([label_name.encode("utf-8")]),
            VIDEO_ID: _bytes_feature([video_id.encode("utf-8")]),
            FRAME_INDICES: _int64_feature(list(frame_indices)),
            TIMESTAMPS: _float_feature([float(x) for x in timestamps]),
        }
    )


# --------------------------------------------------------------------------- decoding


def decode_clip(serialized: bytes) -> dict[str, Any]:
    """Parses a serialised clip without TensorFlow (tfrecord-lite).

    Returns:
        ``{frames: list[bytes], label: int, label_name: str, video_id: str,
        frame_indices: list[int], timestamps: list[float]}``.

    Raises:
        ContractError: if a key of the contract is missing.
    """
    import tfrecord_lite  # local import: only readers that need it pay for it

    try:
        raw = tfrecord_lite.decode_example(serialized)
    except (RuntimeError, ValueError) as exc:
        raise ContractError(f"record is not a tf.train.Example: {exc}") from exc
    missing = [k for k in FEATURE_KEYS if k not in raw]
    if missing:
        raise ContractError(f"record lacks feature(s) {missing}; expected keys {list(FEATURE_KEYS)}")
    return {
        FRAMES: list(raw[FRAMES]),
        LABEL: int(raw[LABEL][0]),
        LABEL_NAME: _text(raw[LABEL_NAME][0]),
        VIDEO_ID: _text(raw[VIDEO_ID][0]),
        FRAME_INDICES: [int(x) for x in raw[FRAME_INDICES]],
        TIMESTAMPS: [float(x) for x in raw[TIMESTAMPS]],
    }


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tf_feature_spec(sequence_length: int) -> dict[str, Any]:
    """The ``tf.io.parse_example`` spec of a clip, with fully static shapes."""
    import tensorflow as tf  # local import: the Beam job never needs TensorFlow

    t = sequence_length
    return {
        FRAMES: tf.io.FixedLenFeature([t], tf.string),
        LABEL: tf.io.FixedLenFeature([1], tf.int64),
        LABEL_NAME: tf.io.FixedLenFeature([1], tf.string),
        VIDEO_ID: tf.io.FixedLenFeature([1], tf.string),
        FRAME_INDICES: tf.io.FixedLenFeature([t], tf.int64),
        TIMESTAMPS: tf.io.FixedLenFeature([t], tf.float32),
    }


# --------------------------------------------------------------------------- file names


def shard_pattern(split: str, compressed: bool = False) -> str:
    """Glob of a split's shards relative to the records directory."""
    return f"{split}-*-of-*{SHARD_SUFFIX}" + (".gz" if compressed else "")


def shard_name(split: str, index: int, count: int, compressed: bool = False) -> str:
    """File name of one shard: ``{split}-NNNNN-of-MMMMM.tfrecord[.gz]``."""
    return f"{split}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}" + (".gz" if compressed else "")


# --------------------------------------------------------------------------- dataset.json


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What ``dataset.json`` states: the shape contract and how the data was made.

    Attributes:
        sequence_length: T, frames per clip.
        height: H of every frame.
        width: W of every frame.
        channels: C of every frame (3 for RGB).
        frame_encoding: ``jpeg`` or ``png``.
        classes: class names; position is the label.
        splits: ``{split: {"clips": n, "videos": n}}``.
        errors: number of input videos that produced no clip.
        compression: ``none`` or ``gzip`` (how the shards are compressed).
        sampling: the preprocessing parameters that produced the records.
        decode: what this run cost, summed over the videos that gave clips:
            ``mode`` (``preprocess.decode``), ``frames_decoded`` (in this run), ``frames_kept``
            (distinct frames in the records), ``videos_seek`` / ``videos_sequential`` (how each
            video decoded in this run was decoded, see ``preprocess.decode``),
            ``videos_shorter_than_stated`` (files holding less than their header states, planned
            on what they hold), ``videos_reused`` (videos whose clips came from the reuse cache,
            :mod:`pipeline.reuse`, not decoded) and ``videos_hashed`` (files read to hash their
            content, every video without a remembered hash, failed ones included). Empty in a
            ``dataset.json`` written before the key existed, which is still read.
        warnings: what the preprocessing warned about the splits (a split empty or without a
            class: :mod:`pipeline.coverage`); empty when every split has every class.
        format_version: version of this contract.
        format: always ``FORMAT_MARKER``; says the folder is a vidseq records output.
    """

    sequence_length: int
    height: int
    width: int
    channels: int
    frame_encoding: str
    classes: tuple[str, ...]
    splits: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    errors: int = 0
    compression: str = "none"
    sampling: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    decode: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    format_version: int = FORMAT_VERSION
    format: str = FORMAT_MARKER

    def __post_init__(self) -> None:
        if self.format != FORMAT_MARKER:
            raise ContractError(
                f"dataset.json: format {self.format!r} but vidseq records say {FORMAT_MARKER!r}: "
                "this is not a records folder written by python -m pipeline"
            )
        for name in ("sequence_length", "height", "width", "channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ContractError(f"dataset.json: {name} must be a positive integer, got {value!r}")
        if self.frame_encoding not in FRAME_ENCODINGS:
            raise ContractError(
                f"dataset.json: frame_encoding {self.frame_encoding!r} is not one of {FRAME_ENCODINGS}"
            )
        if len(self.classes) < 1 or len(set(self.classes)) != len(self.classes):
            raise ContractError(f"dataset.json: classes must be a non-empty list of unique names, got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "warnings", tuple(self.warnings))

    @property
    def clip_shape(self) -> tuple[int, int, int, int]:
        """``(T, H, W, C)``: the shape of one clip, the model's input without the batch axis."""
        return (self.sequence_length, self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def compressed(self) -> bool:
        return self.compression == "gzip"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["classes"] = list(self.classes)
        data["splits"] = {k: dict(v) for k, v in self.splits.items()}
        data["sampling"] = dict(self.sampling)
        data["decode"] = dict(self.decode)
        data["warnings"] = list(self.warnings)
        return {"format": data.pop("format"), "format_version": data.pop("format_version"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "dataset.json") -> DatasetSpec:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ContractError(
                f"{source}: format_version {version!r} but this vidseq reads version {FORMAT_VERSION}: "
                "re-run preprocessing (python -m pipeline) with this version"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ContractError(f"{source}: unknown key(s) {unknown}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in data
        )
        if missing:
            raise ContractError(f"{source}: missing key(s) {missing}")
        return cls(**{**data, "classes": tuple(data["classes"])})

    @classmethod
    def from_json(cls, text: str, source: str = "dataset.json") -> DatasetSpec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ContractError(f"{source} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source)

    def check_clip_shape(self, shape: Sequence[int | None], what: str = "the model") -> None:
        """Raises a clear error if ``shape`` (T, H, W, C) is not this dataset's clip shape."""
        check_clip_shape(self.clip_shape, shape, what)


def check_clip_shape(
    records_shape: Sequence[int | None], expected: Sequence[int | None], what: str = "the model"
) -> None:
    """Compares a records clip shape with what a consumer expects; both are (T, H, W, C).

    Raises:
        ContractError: naming both shapes and the fix.
    """
    got = tuple(records_shape)
    want = tuple(expected)
    if len(want) == 3 or len(got) == 3:
        raise ContractError(
            f"{what} has shape {want} but clips are {got}: the time axis is missing; a CNN-LSTM "
            "takes (batch, time, height, width, channels), wrap the CNN in TimeDistributed and feed clips"
        )
    if len(got) != 4 or len(want) != 4:
        raise ContractError(f"clips are {got} but {what} expects {want}: both must be (T, H, W, C)")
    if any(w is not None and g is not None and w != g for g, w in zip(got, want)):
        raise ContractError(
            f"records are {got} but {what} expects {want} (T, H, W, C): re-run preprocessing "
            "with matching preprocess.sequence_length/height/width or rebuild the model from this dataset.json"
        )


def read_text(records_dir: str, name: str) -> str | None:
    """A small text file beside the shards (``dataset.json``, ``errors.jsonl``), or None if absent.

    Local paths use plain file access; ``s3://`` and ``gs://`` go through :mod:`pipeline.storage`
    (the AWS variables or a Beam job's ``--s3_*`` flags; Google's default credentials), so
    training and predict need no Beam import.

    Raises:
        StorageError: one line naming the URL if the store cannot be read (no such bucket,
            credentials refused, endpoint unreachable).
    """
    if "://" not in records_dir:
        path = os.path.join(records_dir, name)
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    from pipeline import storage

    data = storage.read_bytes(storage.join(records_dir, name))
    return None if data is None else data.decode("utf-8")


def read_spec(records_dir: str) -> DatasetSpec:
    """Reads ``dataset.json`` from a records directory (local, ``s3://``, ``gs://``).

    Raises:
        MissingFileError: naming the missing file and how to make it.
        StorageError: if the store cannot be read (one line naming the URL).
    """
    from vidseq.errors import MissingFileError

    text = read_text(records_dir, DATASET_JSON)
    path = f"{records_dir.rstrip('/')}/{DATASET_JSON}"
    if text is None:
        raise MissingFileError(f"{path} not found: run preprocessing first (python -m pipeline --output {records_dir})")
    return DatasetSpec.from_json(text, source=path)


class MissingSplitError(VidseqError, ValueError):
    """The records lack a split that a stage needs (no clips in it); raised before any TensorFlow work."""


def require_splits(spec: DatasetSpec, needed: Sequence[str], records_dir: str, purpose: str, fix: str) -> None:
    """Refuses records whose ``dataset.json`` counts no clips in one of ``needed``.

    Preprocessing makes records of any listing (a test set alone, one video); each stage
    states what it needs before it starts. A ``dataset.json`` that does not count a split
    (older records) is left to the stage's own reading.

    Args:
        spec: the records' ``dataset.json``.
        needed: the splits the stage needs, in order.
        records_dir: where the records are, for the message.
        purpose: what needs them, e.g. ``training needs clips in train and val``.
        fix: the other way out besides re-running preprocessing, e.g. ``set evaluate.split``.

    Raises:
        MissingSplitError: one line naming the first empty split, the counts, and what to change.
    """
    if not spec.splits:
        return
    for split in needed:
        clips = spec.splits.get(split, {}).get("clips")
        if clips is None and split in spec.splits:
            continue  # counted without clips: the stage reads the shards itself
        if not clips:
            fractions = dict(spec.sampling.get("splits") or {})
            counts = ", ".join(f"{name} {int(c.get('clips') or 0)}" for name, c in spec.splits.items())
            raise MissingSplitError(
                f"{records_dir} has no clips in split {split!r} (clips per split: {counts}; made with "
                f"preprocess.splits {json.dumps(fractions)}): {purpose}; re-run preprocessing with a "
                f"preprocess.splits that gives {split} a fraction, more videos (or groups), or a manifest "
                f"split column that names {split}, or {fix}"
            )


def read_errors(records_dir: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The one reader of ``errors.jsonl``: its entries, and a problem line per line that is not one.

    A missing file means no errors (object stores cannot hold an empty ``errors.jsonl``).

    Returns:
        ``(entries, problems)``: the objects with ``path``, ``reason`` and ``stage``, in file
        order, and ``"errors.jsonl line N: ..."`` for each line that is not such an object.
    """
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate((read_text(records_dir, ERRORS_JSONL) or "").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not {"stage", "reason"} <= set(entry):
                raise ValueError("missing stage or reason")
        except ValueError as exc:
            problems.append(f"{ERRORS_JSONL} line {number}: not an object with stage and reason ({exc})")
            continue
        entries.append(entry)
    return entries, problems
