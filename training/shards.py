"""Record shards: a split's files, the records in them, its clip count, and the one error that names a damaged record.

Shards are read where they lie: local folders and ``gs://`` by TensorFlow's own readers,
``s3://`` (TensorFlow has no S3 filesystem) streamed through :mod:`pipeline.storage` into
tf.data, CRC-checked the same way (:func:`record_dataset`).

tf.data reads shards fast and, on damage, says only ``corrupted record at <offset>``. The
stages read inside :func:`reading_records`: when TensorFlow reports data loss (or a split holds
fewer records than ``dataset.json`` counts), the split's shards are re-read with TensorFlow's
CRC-checking reader to find the damaged file and record, and the error names both and the fix.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator, Sequence

import tensorflow as tf

from pipeline import records, storage
from pipeline.records import DatasetSpec
from vidseq.errors import VidseqError, WorkFailedError

logger = logging.getLogger(__name__)


class EmptySplitError(VidseqError, ValueError):
    """A split that a stage needs has no clips (or no shard files)."""


class DamagedRecordsError(WorkFailedError, ValueError):
    """A shard cannot be read: a record fails its CRC, the file is truncated, or its gzip stream is broken."""


# --------------------------------------------------------------------------- shards


_TF_SCHEMES = ("", "file", "gs")  # read by TensorFlow itself; anything else streams through pipeline.storage


def tensorflow_reads(path: str) -> bool:
    """Whether TensorFlow's own file system reads ``path`` (local, ``gs://``); else it is streamed."""
    return storage.scheme(path) in _TF_SCHEMES


def shard_files(records_dir: str, split: str, spec: DatasetSpec) -> list[str]:
    """The shard files of ``split``, sorted.

    Raises:
        EmptySplitError: if ``dataset.json`` counts no clips for the split or no shard exists.
        StorageError: if the store cannot be listed (one line naming the URL).
    """
    name = records.shard_pattern(split, spec.compressed)
    pattern = storage.join(records_dir, name)
    if not storage.is_remote(records_dir):
        files = sorted(tf.io.gfile.glob(pattern))
    else:
        files = storage.glob(pattern)
    counted = spec.splits.get(split, {}).get("clips")
    if not files or counted == 0:
        raise EmptySplitError(
            f"split {split!r} has no clips in {records_dir} (dataset.json counts {counted}, "
            f"{len(files)} shard file(s) match {name}): give preprocessing more videos "
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
        return int(sum(1 for _ in record_dataset(files, spec)))


def record_dataset(
    files: Sequence[str], spec: DatasetSpec, *, shuffle: bool = False, seed: int | None = None
) -> tf.data.Dataset:
    """The serialised records of ``files``, up to 8 shards interleaved, in a fixed order for a given seed.

    Local and ``gs://`` shards are read by ``TFRecordDataset``; other stores (``s3://``) are
    streamed through :func:`pipeline.storage.read_tfrecords`, one Python generator per shard,
    several in parallel. Either way a damaged record fails the read: iterate inside
    :func:`reading_records`.

    Args:
        files: shard paths.
        spec: the records' spec (compression).
        shuffle: shuffle the file order (again each epoch).
        seed: seeds that shuffle.
    """
    files = list(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if all(tensorflow_reads(f) for f in files):
        compression = compression_type(spec)
        read = lambda path: tf.data.TFRecordDataset(path, compression_type=compression)  # noqa: E731
    else:
        read = lambda path: _streamed_shard(path, spec.compressed)  # noqa: E731
    cycle = min(len(files), 8)
    return ds.interleave(read, cycle_length=cycle, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


_READ_FAILED = "vidseq: reading a shard failed:"


@tf.autograph.experimental.do_not_convert
def _streamed_shard(path: tf.Tensor, compressed: bool) -> tf.data.Dataset:
    """One shard's records through Python; a failure ends it with one error naming the shard."""

    def generate(name: bytes):
        url = name.decode("utf-8")
        try:
            for record in storage.read_tfrecords(url, compressed):
                yield record, b""
        except (storage.RecordError, storage.StorageError) as exc:
            kind = "damaged" if isinstance(exc, storage.RecordError) else "storage"
            yield b"", f"{kind}|{url}: {exc}".encode("utf-8")

    signature = (tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.string))
    ds = tf.data.Dataset.from_generator(generate, args=(path,), output_signature=signature)
    return ds.map(_raise_problem)


def _raise_problem(record: tf.Tensor, problem: tf.Tensor) -> tf.Tensor:
    check = tf.debugging.Assert(tf.equal(tf.strings.length(problem), 0), [_READ_FAILED, problem])
    with tf.control_dependencies([check]):
        return tf.identity(record)


def compression_type(spec: DatasetSpec) -> str:
    return "GZIP" if spec.compressed else ""


# --------------------------------------------------------------------------- damaged shards

_FRAMING_BYTES = 16  # per record: 8-byte length, 4-byte CRC of the length, the data, 4-byte CRC of the data
_TF_DAMAGE = re.compile(r"(corrupted|truncated) record at \d+|inflate\(\) failed[^\[]*")


def scan_shard(path: str, compressed: bool = False) -> tuple[int, str | None]:
    """Reads one shard to its end with a CRC-checking reader (TensorFlow's; :mod:`pipeline.storage`'s if streamed).

    Returns:
        ``(records read, damage)``: ``damage`` is ``None`` if the whole file reads, else where
        and how the first unreadable record is damaged: ``record #N at byte B is corrupted
        (CRC mismatch)`` (flipped bytes in a length or a payload), ``... is truncated (the
        file ends inside it)``, or for a gzip shard ``...: the gzip stream is broken
        (inflate() failed ...)``. ``B`` is where the record starts (in the decompressed
        stream of a gzip shard).
    """
    index = offset = 0
    if not tensorflow_reads(path):
        try:
            for record in storage.read_tfrecords(path, compressed):
                index += 1
                offset += len(record) + _FRAMING_BYTES
        except storage.RecordError as exc:
            return index, _damage(index, offset, compressed, str(exc))
        return index, None
    lengths = tf.data.TFRecordDataset(path, compression_type="GZIP" if compressed else "").map(tf.strings.length)
    try:
        for length in lengths.as_numpy_iterator():
            index += 1
            offset += int(length) + _FRAMING_BYTES
    except tf.errors.DataLossError as exc:
        return index, _damage(index, offset, compressed, (exc.message or "").strip())
    return index, None


def _damage(index: int, offset: int, compressed: bool, message: str) -> str:
    where = f"record #{index} at byte {offset}{' of the decompressed stream' if compressed else ''}"
    found = _TF_DAMAGE.search(message)
    kind = found.group(0).strip() if found else (message.splitlines() or ["unknown data loss"])[0]
    if kind.startswith("corrupted"):
        return f"{where} is corrupted (CRC mismatch)"
    if kind.startswith("truncated"):
        return f"{where} is truncated (the file ends inside it)"
    return f"{where}: the {'gzip stream is broken' if compressed else 'record is unreadable'} ({kind})"


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
    except tf.errors.InvalidArgumentError as exc:  # a streamed shard (pipeline.storage) that failed
        if _READ_FAILED not in (exc.message or ""):
            raise
        kind, problem = _read_problem(exc)
        if kind == "storage":
            raise storage.StorageError(problem.split(": ", 1)[-1]) from None
        error = damage_error(records_dir, spec, splits) or DamagedRecordsError(
            f"reading the {'/'.join(splits)} shards of {records_dir} failed ({problem}) but they read "
            f"fine again: run the command again, or {_fix(records_dir)}"
        )
        raise error from None
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


def _read_problem(exc: tf.errors.OpError) -> tuple[str, str]:
    """``(damaged|storage, "URL: what")`` from the assertion that ended a streamed shard."""
    text = _tf_message(exc).split(_READ_FAILED, 1)[1].strip().lstrip("]").strip().lstrip("[")
    text = text[: text.rfind("]")] if "]" in text else text
    kind, _, problem = text.partition("|")
    return kind, problem.strip()


def _tf_message(exc: tf.errors.OpError) -> str:
    """TensorFlow's message without its graph-node and op decorations."""
    text = re.sub(r"\{\{[^}]*\}\}|\[\[[^\]]*\]\]|\[Op:[^\]]*\].*", "", exc.message or "", flags=re.S)
    return " ".join(text.split()) or type(exc).__name__


# --------------------------------------------------------------------------- parsing
