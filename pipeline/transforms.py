"""The Beam side of preprocessing: named composite PTransforms, thin DoFns, counters, dead letters.

The logic lives in pure modules (``video``, ``clips``, ``records``, ``sources``); this module
only wires it into Beam:

* :class:`DecodeClips` turns :class:`~pipeline.sources.VideoItem` s into ``(split, record)``
  pairs, and routes every video that yields no clip to a dead-letter output of
  ``{path, reason, stage}`` dicts, with counters for each outcome and for the frames decoded
  and kept. Each video is decoded under :func:`pipeline.watchdog.call_with_limit`, so one
  stuck inside FFmpeg or a blocked read is recorded as ``timeout`` and the job goes on.
* :class:`WriteClips` writes one split's records as ``{split}-NNNNN-of-MMMMM.tfrecord[.gz]``
  shards of a target size, deterministically (:mod:`pipeline.sharding`): the same clips give
  the same files on any runner and any number of workers.
* :class:`WriteErrors` and :class:`WriteStats` write ``errors.jsonl`` and the per-split counts
  (clips, videos, decode cost) that the driver turns into ``dataset.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipeline import records, reuse, sharding, video, watchdog
from pipeline.sources import VideoItem
from vidseq.params import PreprocessConfig

logger = logging.getLogger(__name__)

NAMESPACE = "vidseq"
ERRORS_TAG = "errors"
VIDEOS_TAG = "videos"
CRASHED_TAG = "crashed"
HASHES_TAG = "hashes"
STATS_FILE = "stats.jsonl"
HASHES_FILE = "hashes.jsonl"  # content hashes computed in this run, for the reuse cache's memo
# Per video, in the ``videos`` output and stats.jsonl: summed per split, then over splits.
VIDEO_COUNTS = ("clips", "videos", "frames_decoded", "frames_kept", "videos_seek", "videos_sequential",
                "videos_shorter_than_stated", "videos_reused")  # fmt: skip
DECODE_COUNTS = VIDEO_COUNTS[2:]


def watchdog_limit_s(video_timeout_s: float) -> float:
    """How long a video's decoding may go without returning before it is abandoned.

    The decoder's own deadline (``preprocess.video_timeout_s``) fires first whenever the
    decoding gets back to Python; this is the slack for one that does not.
    """
    return video_timeout_s + max(1.0, 0.1 * video_timeout_s)


def error_record(path: str, reason: str, stage: str) -> dict:
    """One line of ``errors.jsonl``."""
    return {"path": path, "reason": " ".join(str(reason).split()), "stage": stage}


class DecodeVideoFn(beam.DoFn):
    """Decodes one video into encoded clip records (or reuses its cached clips); a bad video goes to ``errors``.

    A video's clips are emitted only once the whole video decoded, so a file that breaks half
    way is in ``errors.jsonl`` and in no record: every input is in exactly one of the two.
    With a reuse cache (:mod:`pipeline.reuse`), a video whose content hash the memo does not
    know is hashed first (its row goes to the ``hashes`` output); a video whose content and
    parameters have an entry is not decoded: its clips are encoded from the entry, with this
    run's label and ``video_id``, into the same records decoding would give.

    Args:
        cfg: the ``preprocess`` parameters.
        classes: class names; position is the label.
        decoder_threads: FFmpeg threads per video (``None``: ``cfg.decode_threads``); the
            driver sets it so that workers × threads fills the cores without oversubscribing.
        cache: the reuse cache, or ``None`` to decode every video.
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        classes: Sequence[str],
        decoder_threads: int | None = None,
        cache: reuse.Cache | None = None,
    ):
        self._cfg = cfg
        self._decode_cfg = dataclasses.replace(cfg, decode_threads=decoder_threads) if decoder_threads else cfg
        self._label_of = {name: index for index, name in enumerate(classes)}
        self._cache = cache
        self._read = Metrics.counter(NAMESPACE, "videos_read")
        self._ok = Metrics.counter(NAMESPACE, "videos_ok")
        self._clips = Metrics.counter(NAMESPACE, "clips_written")
        self._failed = Metrics.counter(NAMESPACE, "videos_failed")
        self._frames_decoded = Metrics.counter(NAMESPACE, "frames_decoded")
        self._frames_kept = Metrics.counter(NAMESPACE, "frames_kept")
        self._abandoned = Metrics.counter(NAMESPACE, "decoders_abandoned")
        self._reused = Metrics.counter(NAMESPACE, "videos_reused")
        self._hashed = Metrics.counter(NAMESPACE, "videos_hashed")
        self._decode_ms = Metrics.distribution(NAMESPACE, "video_decode_ms")

    def process(self, item: VideoItem) -> Iterator:
        self._read.inc()
        started = time.perf_counter()
        stats = video.DecodeStats()
        limit = watchdog_limit_s(self._cfg.video_timeout_s)
        entry = None
        content = item.content
        try:
            if self._cache is not None:
                if not content:
                    read_at = time.time()
                    content = watchdog.call_with_limit(lambda: reuse.hash_file(item.path), limit, "vidseq-hash")
                    self._hashed.inc()
                    row = {"path": item.path, "stat": item.stat, "sha256": content,
                           "settled": reuse.settled(item.modified, read_at)}  # fmt: skip
                    yield beam.pvalue.TaggedOutput(HASHES_TAG, json.dumps(row, sort_keys=True))
                entry = self._cache.read(content)
            if entry is None:
                clips = watchdog.call_with_limit(lambda: list(self._decode(item, stats)), limit)
            else:
                clips = list(entry.clips)
                stats.frames_kept, stats.shorter_than_stated = entry.frames_kept, entry.shorter_than_stated
        except watchdog.Abandoned:
            self._abandoned.inc()
            yield self._fail(
                item,
                f"decoding did not return within {limit:g} s (preprocess.video_timeout_s "
                f"{self._cfg.video_timeout_s:g} s plus slack): stuck in the decoder or in a read; abandoned",
                "timeout",
            )
            return
        except video.VideoError as exc:
            yield self._fail(item, exc.reason, exc.stage)
            return
        except OSError as exc:  # unreadable: permissions, vanished file, filesystem errors
            yield self._fail(item, f"cannot read the file: {exc}", "open")
            return
        finally:
            self._frames_decoded.inc(stats.frames_decoded)  # failed videos cost decoding too
        if not clips:
            yield self._fail(item, "decoded but produced no clip", "sample")
            return
        if entry is None and self._cache is not None:
            self._store(item, content, clips, stats)
        label = self._label_of[item.label]
        encoded = [
            records.encode_clip(c.frames, label, item.label, item.video_id, c.frame_indices, c.timestamps) for c in clips
        ]
        self._ok.inc()
        self._reused.inc(int(entry is not None))
        self._clips.inc(len(encoded))
        self._frames_kept.inc(stats.frames_kept)
        self._decode_ms.update(int((time.perf_counter() - started) * 1000))
        decoded = entry is None
        counts = (len(encoded), 1, stats.frames_decoded, stats.frames_kept, int(decoded and stats.mode == "seek"),
                  int(decoded and stats.mode != "seek"), int(stats.shorter_than_stated), int(not decoded))  # fmt: skip
        yield beam.pvalue.TaggedOutput(VIDEOS_TAG, (item.split, counts))
        for record in encoded:
            yield (item.split, record)

    def _decode(self, item: VideoItem, stats: video.DecodeStats) -> Iterator[video.EncodedClip]:
        with FileSystems.open(
            item.path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            yield from video.iter_clips(
                handle, self._decode_cfg, name=item.video_id, timeout_s=self._cfg.video_timeout_s, stats=stats
            )

    def _store(self, item: VideoItem, content: str, clips: list, stats: video.DecodeStats) -> None:
        """Writes the video's cache entry; a cache that cannot be written costs the next run time, not this run."""
        try:
            self._cache.write(content, reuse.Entry(tuple(clips), stats.frames_kept, stats.shorter_than_stated))
        except OSError as exc:
            logger.warning("%s: its clips are not cached (%s); the next run decodes it again", item.video_id, exc)

    def _fail(self, item: VideoItem, reason: str, stage: str) -> beam.pvalue.TaggedOutput:
        self._failed.inc()
        Metrics.counter(NAMESPACE, f"videos_failed_{stage}").inc()
        logger.warning("%s: %s (%s)", item.video_id, reason, stage)
        return beam.pvalue.TaggedOutput(ERRORS_TAG, error_record(item.video_id, reason, stage))


class DecodeClips(beam.PTransform):
    """``VideoItem`` s -> a dict of PCollections.

    ``clips``: (split, record bytes); ``videos``: (split, counts) per decoded video, the
    counts named by :data:`VIDEO_COUNTS`; ``hashes``: a JSON line per video hashed in this run
    (with a reuse cache);
    ``errors``: ``{path, reason, stage}`` per video without clips, including videos whose
    decoding raised something unexpected (Beam's ``with_exception_handling`` dead letters,
    stage ``crash``), so one bad file never fails the job.
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        classes: Sequence[str],
        decoder_threads: int | None = None,
        cache: reuse.Cache | None = None,
    ):
        super().__init__()
        self._cfg = cfg
        self._classes = tuple(classes)
        self._threads = decoder_threads
        self._cache = cache

    def expand(self, videos):
        decoded = (
            videos
            | "SpreadVideos" >> beam.Reshuffle()
            | "Decode"
            >> beam.ParDo(DecodeVideoFn(self._cfg, self._classes, self._threads, self._cache))
            .with_output_types(Any, **{ERRORS_TAG: Any, VIDEOS_TAG: Any, HASHES_TAG: Any})  # declared: no Beam warning
            .with_outputs(ERRORS_TAG, VIDEOS_TAG, HASHES_TAG, main="clips")
            .with_exception_handling(dead_letter_tag=CRASHED_TAG)  # a bug or library failure on one video
        )
        crashed = decoded[CRASHED_TAG] | "CrashReports" >> beam.MapTuple(_crash_record)
        errors = (decoded[ERRORS_TAG], crashed) | "AllDecodeErrors" >> beam.Flatten()
        return {"clips": decoded["clips"], VIDEOS_TAG: decoded[VIDEOS_TAG], ERRORS_TAG: errors,
                HASHES_TAG: decoded[HASHES_TAG]}  # fmt: skip


def _crash_record(item: VideoItem, error) -> dict:
    """Beam's dead letter ``(input, (exception type, message, traceback))`` as an errors.jsonl line."""
    Metrics.counter(NAMESPACE, "videos_failed").inc()
    Metrics.counter(NAMESPACE, "videos_failed_crash").inc()
    message = error[1]  # repr of the exception, e.g. ZeroDivisionError('...')
    logger.error("%s: unexpected error %s\n%s", item.video_id, message, error[2] if len(error) > 2 else "")
    return error_record(item.video_id, f"unexpected error: {message}", "crash")


class _WriteShard(beam.DoFn):
    """Writes one key range's records, in key order, into a part file that :func:`_name_shards` renames."""

    def __init__(self, output_dir: str, split: str, compressed: bool):
        self._output_dir = output_dir
        self._split = split
        self._compressed = compressed

    def process(self, shard: tuple[int, Iterable[tuple[bytes, bytes]]]) -> Iterator[str]:
        index, keyed = shard
        path = FileSystems.join(self._output_dir, f".{self._split}-part-{index:05d}")
        compression = CompressionTypes.GZIP if self._compressed else CompressionTypes.UNCOMPRESSED
        with FileSystems.create(path, mime_type="application/octet-stream", compression_type=compression) as handle:
            for _, record in sorted(keyed, key=lambda kv: kv[0]):
                _TFRecordUtil.write_record(handle, record)
        yield path


def _name_shards(parts: Sequence[str], output_dir: str, split: str, compressed: bool) -> list[str]:
    """Renames the part files, in key-range order, to ``{split}-00000-of-NNNNN...``: contiguous
    names even where a key range held no record."""
    parts = sorted(parts)
    names = [FileSystems.join(output_dir, records.shard_name(split, i, len(parts), compressed)) for i in range(len(parts))]
    if parts:
        FileSystems.rename(parts, names)
    return names


def _assign_shard(keyed: tuple[bytes, bytes], total_bytes: int, max_bytes: int) -> tuple[int, tuple[bytes, bytes]]:
    return sharding.shard_of(keyed[0], sharding.shard_count(total_bytes, max_bytes)), keyed


class WriteClips(beam.PTransform):
    """Writes one split's records as ``{split}-NNNNN-of-MMMMM.tfrecord[.gz]`` shards of about ``shard_size_mb``.

    Sharding is deterministic (:mod:`pipeline.sharding`): the shard count follows the split's
    total size and each record's shard and position follow its key, so the same clips give
    byte-identical shards whatever the runner, the number of workers or the bundle order.
    An empty split writes no shard (and object stores cannot hold zero-byte files anyway).
    """

    def __init__(self, output_dir: str, split: str, cfg: PreprocessConfig):
        super().__init__()
        self._output_dir = output_dir
        self._split = split
        self._compressed = cfg.compression == "gzip"
        self._max_bytes = max(1, int(cfg.shard_size_mb * 1024 * 1024))

    def expand(self, split_records):
        keyed = split_records | "KeyByHash" >> beam.Map(lambda record: (sharding.record_key(record), record))
        total = beam.pvalue.AsSingleton(
            keyed | "RecordBytes" >> beam.Map(lambda kv: len(kv[1])) | "SplitBytes" >> beam.CombineGlobally(sum)
        )
        return (
            keyed
            | "AssignShard" >> beam.Map(_assign_shard, total_bytes=total, max_bytes=self._max_bytes)
            | "GroupShards" >> beam.GroupByKey()
            | "WriteParts"
            >> beam.ParDo(_WriteShard(self._output_dir, self._split, self._compressed))
            | "AllParts" >> beam.combiners.ToList()
            | "NameShards" >> beam.Map(_name_shards, self._output_dir, self._split, self._compressed)
        )


class WriteErrors(beam.PTransform):
    """Writes the dead-letter dicts as ``errors.jsonl`` (one JSON object per line, sorted by path)."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._path = FileSystems.join(output_dir, records.ERRORS_JSONL)

    def expand(self, errors):
        return (
            errors
            | "ToJson" >> beam.Map(lambda e: json.dumps(e, sort_keys=True))
            | "WriteJsonl" >> beam.io.WriteToText(self._path, shard_name_template="", num_shards=1, skip_if_empty=True)
        )


class WriteStats(beam.PTransform):
    """Sums the ``(split, counts)`` of every video into ``stats.jsonl``, one line per split, for ``dataset.json``."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._path = FileSystems.join(output_dir, STATS_FILE)

    def expand(self, videos):
        return (
            videos
            | "SumPerSplit" >> beam.CombinePerKey(_sum_counts)
            | "ToJson" >> beam.MapTuple(lambda split, counts: json.dumps({"split": split, **dict(zip(VIDEO_COUNTS, counts))}))
            | "WriteJsonl" >> beam.io.WriteToText(self._path, shard_name_template="", num_shards=1, skip_if_empty=True)
        )


def _sum_counts(rows) -> tuple[int, ...]:
    total = [0] * len(VIDEO_COUNTS)
    for row in rows:
        for i, value in enumerate(row):
            total[i] += value
    return tuple(total)


def _stats_rows(output_dir: str) -> list[dict]:
    text = records.read_text(output_dir, STATS_FILE) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_stats(output_dir: str) -> dict[str, dict[str, int]]:
    """Reads what :class:`WriteStats` wrote: ``{split: {clips, videos}}`` for every split."""
    stats = {split: {"clips": 0, "videos": 0} for split in records.SPLITS}
    for row in _stats_rows(output_dir):
        stats[row["split"]] = {"clips": int(row["clips"]), "videos": int(row["videos"])}
    return stats


def read_hashes(output_dir: str) -> list[dict]:
    """The content hashes :class:`DecodeVideoFn` computed in this run: ``{path, stat, sha256, settled}`` each."""
    text = records.read_text(output_dir, HASHES_FILE) or ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_decode_counts(output_dir: str) -> dict[str, int]:
    """The decode counts (:data:`DECODE_COUNTS`) of :class:`WriteStats`, summed over the splits."""
    totals = dict.fromkeys(DECODE_COUNTS, 0)
    for row in _stats_rows(output_dir):
        for key in DECODE_COUNTS:
            totals[key] += int(row.get(key, 0))
    return totals


def build(
    pipeline: beam.Pipeline,
    items: Sequence[VideoItem],
    listing_errors: Sequence[Mapping],
    classes: Sequence[str],
    cfg: PreprocessConfig,
    output_dir: str,
    decoder_threads: int | None = None,
    cache: reuse.Cache | None = None,
) -> None:
    """Adds the whole preprocessing graph to ``pipeline``, writing into ``output_dir``."""
    videos = pipeline | "ListVideos" >> beam.Create(list(items), reshuffle=False)
    decoded = videos | "DecodeClips" >> DecodeClips(cfg, classes, decoder_threads, cache)
    by_split = decoded["clips"] | "BySplit" >> beam.Partition(lambda kv, _: records.SPLITS.index(kv[0]), len(records.SPLITS))
    for split, split_clips in zip(records.SPLITS, by_split):
        (
            split_clips
            | f"Records{split.title()}" >> beam.Map(lambda kv: kv[1])
            | f"Write{split.title()}" >> WriteClips(output_dir, split, cfg)
        )
    decoded[VIDEOS_TAG] | "WriteStats" >> WriteStats(output_dir)
    decoded[HASHES_TAG] | "WriteHashes" >> beam.io.WriteToText(
        FileSystems.join(output_dir, HASHES_FILE), shard_name_template="", num_shards=1, skip_if_empty=True
    )
    listed = pipeline | "ListingErrors" >> beam.Create([dict(e) for e in listing_errors], reshuffle=False)
    (
        (decoded[ERRORS_TAG], listed)
        | "AllErrors" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(output_dir)
    )
