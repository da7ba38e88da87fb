"""Record shards: a split's files, its clip count, and the one error that names a damaged record.

tf.data reads shards fast and, on damage, says only ``corrupted record at <offset>``. The
stages read inside :func:`reading_records`: when TensorFlow reports data loss (or a split holds
fewer records than ``dataset.json`` counts), the split's shards are re-read with TensorFlow's
CRC-checking reader to find the damaged file and record, and the error names both and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence

import tensorflow as tf

from pipeline import records
from pipeline.records import DatasetSpec
from vidseq.errors import VidseqError, WorkFailedError

logger = logging.getLogger(__name__)


class EmptySplitError(VidseqError, ValueError):
    """A split that a stage needs has no clips (or no shard files)."""


class DamagedRecordsError(WorkFailedError, ValueError):
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
        return int(sum(1 for _ in tf.data.TFRecordDataset(files, compression_type=compression_type(spec))))


def compression_type(spec: DatasetSpec) -> str:
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
