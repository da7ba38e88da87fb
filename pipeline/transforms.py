"""The Beam side of preprocessing: named composite PTransforms, thin DoFns, counters, dead letters.

The logic lives in pure modules (``video``, ``clips``, ``records``, ``sources``); this module
only wires it into Beam:

* :class:`DecodeClips` turns :class:`~pipeline.sources.VideoItem` s into ``(split, record)``
  pairs, and routes every video that yields no clip to a dead-letter output of
  ``{path, reason, stage}`` dicts, with counters for each outcome.
* :class:`WriteClips` writes one split's records as ``{split}-NNNNN-of-MMMMM.tfrecord[.gz]``
  shards of a target size with Beam's file-based sink.
* :class:`WriteErrors` and :class:`WriteStats` write ``errors.jsonl`` and the per-split counts
  that the driver turns into ``dataset.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.io import filebasedsink, iobase
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.metrics import Metrics

from pipeline import records, video
from pipeline.sources import VideoItem
from vidseq.params import PreprocessConfig

logger = logging.getLogger(__name__)

NAMESPACE = "vidseq"
ERRORS_TAG = "errors"
VIDEOS_TAG = "videos"
CRASHED_TAG = "crashed"
STATS_FILE = "stats.jsonl"


def error_record(path: str, reason: str, stage: str) -> dict:
    """One line of ``errors.jsonl``."""
    return {"path": path, "reason": " ".join(str(reason).split()), "stage": stage}


class DecodeVideoFn(beam.DoFn):
    """Decodes one video into encoded clip records; a bad video goes to the ``errors`` output.

    A video's clips are emitted only once the whole video decoded, so a file that breaks half
    way is in ``errors.jsonl`` and in no record: every input is in exactly one of the two.
    """

    def __init__(self, cfg: PreprocessConfig, classes: Sequence[str]):
        self._cfg = cfg
        self._label_of = {name: index for index, name in enumerate(classes)}
        self._read = Metrics.counter(NAMESPACE, "videos_read")
        self._ok = Metrics.counter(NAMESPACE, "videos_ok")
        self._clips = Metrics.counter(NAMESPACE, "clips_written")
        self._failed = Metrics.counter(NAMESPACE, "videos_failed")
        self._decode_ms = Metrics.distribution(NAMESPACE, "video_decode_ms")

    def process(self, item: VideoItem) -> Iterator:
        import time

        self._read.inc()
        started = time.perf_counter()
        try:
            encoded = list(self._encode(item))
        except video.VideoError as exc:
            yield self._fail(item, exc.reason, exc.stage)
            return
        except OSError as exc:  # unreadable: permissions, vanished file, filesystem errors
            yield self._fail(item, f"cannot read the file: {exc}", "open")
            return
        if not encoded:
            yield self._fail(item, "decoded but produced no clip", "sample")
            return
        self._ok.inc()
        self._clips.inc(len(encoded))
        self._decode_ms.update(int((time.perf_counter() - started) * 1000))
        yield beam.pvalue.TaggedOutput(VIDEOS_TAG, (item.split, len(encoded)))
        for record in encoded:
            yield (item.split, record)

    def _encode(self, item: VideoItem) -> Iterator[bytes]:
        label = self._label_of[item.label]
        with FileSystems.open(
            item.path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            for clip in video.iter_clips(handle, self._cfg, name=item.video_id, timeout_s=self._cfg.video_timeout_s):
                yield records.encode_clip(
                    clip.frames, label, item.label, item.video_id, clip.frame_indices, clip.timestamps
                )

    def _fail(self, item: VideoItem, reason: str, stage: str) -> beam.pvalue.TaggedOutput:
        self._failed.inc()
        Metrics.counter(NAMESPACE, f"videos_failed_{stage}").inc()
        logger.warning("%s: %s (%s)", item.video_id, reason, stage)
        return beam.pvalue.TaggedOutput(ERRORS_TAG, error_record(item.video_id, reason, stage))


class DecodeClips(beam.PTransform):
    """``VideoItem`` s -> a dict of PCollections.

    ``clips``: (split, record bytes); ``videos``: (split, clip count) per decoded video;
    ``errors``: ``{path, reason, stage}`` per video without clips, including videos whose
    decoding raised something unexpected (Beam's ``with_exception_handling`` dead letters,
    stage ``crash``), so one bad file never fails the job.
    """

    def __init__(self, cfg: PreprocessConfig, classes: Sequence[str]):
        super().__init__()
        self._cfg = cfg
        self._classes = tuple(classes)

    def expand(self, videos):
        decoded = (
            videos
            | "SpreadVideos" >> beam.Reshuffle()
            | "Decode"
            >> beam.ParDo(DecodeVideoFn(self._cfg, self._classes))
            .with_outputs(ERRORS_TAG, VIDEOS_TAG, main="clips")
            .with_exception_handling(dead_letter_tag=CRASHED_TAG)  # a bug or library failure on one video
        )
        crashed = decoded[CRASHED_TAG] | "CrashReports" >> beam.MapTuple(_crash_record)
        errors = (decoded[ERRORS_TAG], crashed) | "AllDecodeErrors" >> beam.Flatten()
        return {"clips": decoded["clips"], VIDEOS_TAG: decoded[VIDEOS_TAG], ERRORS_TAG: errors}


def _crash_record(item: VideoItem, error) -> dict:
    """Beam's dead letter ``(input, (exception type, message, traceback))`` as an errors.jsonl line."""
    Metrics.counter(NAMESPACE, "videos_failed").inc()
    Metrics.counter(NAMESPACE, "videos_failed_crash").inc()
    message = error[1]  # repr of the exception, e.g. ZeroDivisionError('...')
    logger.error("%s: unexpected error %s\n%s", item.video_id, message, error[2] if len(error) > 2 else "")
    return error_record(item.video_id, f"unexpected error: {message}", "crash")


class _TFRecordShardSink(filebasedsink.FileBasedSink):
    """Beam's TFRecord framing in a file-based sink that starts a new shard at a byte budget."""

    def __init__(self, file_path_prefix: str, compressed: bool, max_bytes_per_shard: int):
        super().__init__(
            file_path_prefix=file_path_prefix,
            coder=beam.coders.BytesCoder(),
            file_name_suffix=records.SHARD_SUFFIX + (".gz" if compressed else ""),
            num_shards=0,
            shard_name_template="-SSSSS-of-NNNNN",
            mime_type="application/octet-stream",
            compression_type=CompressionTypes.GZIP if compressed else CompressionTypes.UNCOMPRESSED,
            max_bytes_per_shard=max_bytes_per_shard,
            skip_if_empty=True,  # an empty split has no shards (and S3 cannot take zero-byte files)
        )

    def write_encoded_record(self, file_handle, value: bytes) -> None:
        _TFRecordUtil.write_record(file_handle, value)


class WriteClips(beam.PTransform):
    """Writes one split's records as ``{split}-NNNNN-of-MMMMM.tfrecord[.gz]`` shards of about ``shard_size_mb``."""

    def __init__(self, output_dir: str, split: str, cfg: PreprocessConfig):
        super().__init__()
        self._prefix = FileSystems.join(output_dir, split)
        self._compressed = cfg.compression == "gzip"
        self._max_bytes = max(1, int(cfg.shard_size_mb * 1024 * 1024))

    def expand(self, split_records):
        sink = _TFRecordShardSink(self._prefix, self._compressed, self._max_bytes)
        return split_records | "WriteShards" >> iobase.Write(sink)


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
    """Sums ``(split, clip count)`` per video into ``stats.jsonl`` for the driver's ``dataset.json``."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._path = FileSystems.join(output_dir, STATS_FILE)

    def expand(self, videos):
        return (
            videos
            | "OneVideo" >> beam.MapTuple(lambda split, clips: (split, (clips, 1)))
            | "SumPerSplit" >> beam.CombinePerKey(_sum_pairs)
            | "ToJson" >> beam.MapTuple(lambda split, cv: json.dumps({"split": split, "clips": cv[0], "videos": cv[1]}))
            | "WriteJsonl" >> beam.io.WriteToText(self._path, shard_name_template="", num_shards=1, skip_if_empty=True)
        )


def _sum_pairs(pairs) -> tuple[int, int]:
    clips = videos = 0
    for c, v in pairs:
        clips += c
        videos += v
    return clips, videos


def read_stats(output_dir: str) -> dict[str, dict[str, int]]:
    """Reads what :class:`WriteStats` wrote: ``{split: {clips, videos}}`` for every split."""
    stats = {split: {"clips": 0, "videos": 0} for split in records.SPLITS}
    for line in (records.read_text(output_dir, STATS_FILE) or "").splitlines():
        if line.strip():
            row = json.loads(line)
            stats[row["split"]] = {"clips": int(row["clips"]), "videos": int(row["videos"])}
    return stats


def build(
    pipeline: beam.Pipeline,
    items: Sequence[VideoItem],
    listing_errors: Sequence[Mapping],
    classes: Sequence[str],
    cfg: PreprocessConfig,
    output_dir: str,
) -> None:
    """Adds the whole preprocessing graph to ``pipeline``, writing into ``output_dir``."""
    videos = pipeline | "ListVideos" >> beam.Create(list(items), reshuffle=False)
    decoded = videos | "DecodeClips" >> DecodeClips(cfg, classes)
    by_split = decoded["clips"] | "BySplit" >> beam.Partition(lambda kv, _: records.SPLITS.index(kv[0]), len(records.SPLITS))
    for split, split_clips in zip(records.SPLITS, by_split):
        (
            split_clips
            | f"Records{split.title()}" >> beam.Map(lambda kv: kv[1])
            | f"Write{split.title()}" >> WriteClips(output_dir, split, cfg)
        )
    decoded[VIDEOS_TAG] | "WriteStats" >> WriteStats(output_dir)
    listed = pipeline | "ListingErrors" >> beam.Create([dict(e) for e in listing_errors], reshuffle=False)
    (
        (decoded[ERRORS_TAG], listed)
        | "AllErrors" >> beam.Flatten()
        | "WriteErrors" >> WriteErrors(output_dir)
    )
