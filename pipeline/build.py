"""``python -m pipeline``: the Beam job that turns raw videos into TFRecords of fixed-length clips.

Usage::

    python -m pipeline --input DIR_OR_MANIFEST --output DIR [--params params.yaml] [--cache DIR | --no-cache] [Beam flags]

Own flags are parsed with ``parse_known_args``; everything else goes to ``PipelineOptions``,
so the same command runs on the DirectRunner (default), Dataflow, Flink or Spark by flags alone.
Without runner flags the DirectRunner runs one worker process per usable core
(:mod:`pipeline.parallelism`). A re-run decodes only new or changed videos: the others' clips
come from the reuse cache (:mod:`pipeline.reuse`, by default ``OUTPUT.cache``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import coverage, parallelism, records, reuse, staging, transforms
from pipeline.sources import InputError, list_videos
from vidseq import cli
from vidseq.errors import WorkFailedError
from vidseq.params import DEFAULT_PARAMS, Params, PreprocessConfig

logger = logging.getLogger(__name__)


class TooManyErrors(WorkFailedError):
    """More than ``preprocess.max_error_fraction`` of the videos produced no clip."""


@dataclasses.dataclass(frozen=True)
class Summary:
    """What one run produced."""

    videos: int
    clips: int
    shards: int
    failed: int
    output: str
    workers: str = "1 process"
    frames_decoded: int = 0
    frames_kept: int = 0
    warnings: int = 0
    reused: int = 0

    def line(self) -> str:
        return (
            f"{self.videos} videos → {self.clips} clips in {self.shards} shards on {self.workers}; "
            + (f"reused the clips of {self.reused} unchanged videos; " if self.reused else "")
            + f"decoded {self.frames_decoded} frames for {self.frames_kept} kept; "
            + (f"{self.failed} failed, see {FileSystems.join(self.output, records.ERRORS_JSONL)}" if self.failed else "none failed")
            + (f"; {self.warnings} warning(s) in dataset.json" if self.warnings else "")
        )


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline",
        description="Decode raw videos into TFRecord shards of fixed-length clips plus dataset.json. "
        "Unknown flags are Beam pipeline options (--runner, --direct_num_workers, --project, ...).",
    )
    parser.add_argument("--input", required=True, help="folder of class folders, or a manifest CSV (path,label[,group][,split])")
    parser.add_argument("--output", required=True, help="records folder (local, gs://, s3://, ...); replaced on success if new, empty or a records output")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params YAML; its preprocess section is read")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", help="reuse cache folder (local, gs://, s3://, ...); default: OUTPUT.cache, beside the output")
    cache.add_argument("--no-cache", action="store_true", help="decode every video; read and write no reuse cache")
    return parser.parse_known_args(argv)


def run(
    input_path: str, output: str, cfg: PreprocessConfig, beam_args: list[str], cache_dir: str | None = None
) -> Summary:
    """Runs the job and publishes its output.

    Args:
        cache_dir: the reuse cache folder (:mod:`pipeline.reuse`); ``None``: decode every video.

    Raises:
        InputError: the input is missing or unusable (before any work).
        staging.OutputError: the output overlaps the input, holds other data, is being written
            by another run or cannot be written (before any work).
        TooManyErrors: too many videos failed; the previous output is left intact.
    """
    parallel = parallelism.plan(beam_args, parallelism.this_machine(), cfg.decode_threads)
    options = PipelineOptions(_quiet_direct_workers(list(parallel.beam_args)) if parallel.workers else list(parallel.beam_args))
    FileSystems.set_options(options)
    if cache_dir:
        staging.check_apart(output, [input_path])  # that refusal first: it names the output
        _check_cache_place(cache_dir, output, input_path)
    with staging.claim(output, input_path) as stage_dir:
        try:
            return _run_into(stage_dir, input_path, output, cfg, options, parallel, cache_dir)
        except TooManyErrors:
            raise  # its staging folder keeps errors.jsonl for the user; the next run removes it
        except BaseException:
            staging.discard(stage_dir)
            raise


def _run_into(
    stage_dir: str,
    input_path: str,
    output: str,
    cfg: PreprocessConfig,
    options: PipelineOptions,
    parallel: parallelism.Parallelism,
    cache_dir: str | None = None,
) -> Summary:
    listing = list_videos(input_path, cfg.splits, cfg.split_salt)
    if not listing.classes:
        raise InputError(f"no usable videos in {input_path}: every entry failed listing ({listing.errors[0]['reason']})")
    staging.check_apart(output, [item.path for item in listing.items], what="the input video")
    cache = reuse.Cache(cache_dir, reuse.fingerprint(cfg)) if cache_dir else None
    if cache is not None:
        for item in listing.items:  # a manifest may list videos anywhere
            relation = staging.overlap(cache_dir, item.path)
            if relation:
                raise staging.OutputError(
                    f"--cache {cache_dir} {relation} the input video {item.path}: "
                    f"choose another --cache (the default is {reuse.default_dir(output)}, beside the output)"
                )
        listing = dataclasses.replace(listing, items=reuse.known(listing.items, reuse.read_memo(cache_dir)))
    split_warnings = coverage.check(listing.items, listing.classes, cfg.splits)  # warnings, never a refusal
    logger.info(
        "found %d videos in %d classes under %s; running on %s",
        len(listing.items), len(listing.classes), input_path, parallel.describe(),
    )  # fmt: skip
    with beam.Pipeline(options=options) as pipeline:
        transforms.build(
            pipeline, listing.items, listing.errors, listing.classes, cfg, stage_dir, parallel.decoder_threads, cache
        )
    stats = transforms.read_stats(stage_dir)
    hashed = transforms.read_hashes(stage_dir)
    decode = {"mode": cfg.decode, **transforms.read_decode_counts(stage_dir), "videos_hashed": len(hashed)}
    if cache is not None:
        _update_cache(cache, listing.items, hashed)
    errors, _ = records.read_errors(stage_dir)  # the job wrote it: every line is an entry
    total = len(listing.items) + len(listing.errors)
    _check_error_fraction(errors, total, cfg, stage_dir, output)
    listed = {split: sum(n.values()) for split, n in coverage.video_counts(listing.items).items()}
    split_warnings += coverage.clip_warnings(stats, listed)
    spec = records.DatasetSpec(
        sequence_length=cfg.sequence_length,
        height=cfg.height,
        width=cfg.width,
        channels=cfg.channels,
        frame_encoding=cfg.frame_encoding,
        classes=listing.classes,
        splits=stats,
        errors=len(errors),
        compression=cfg.compression,
        sampling=cfg.as_dict(),
        decode=decode,
        warnings=tuple(split_warnings),
    )
    with FileSystems.create(FileSystems.join(stage_dir, records.DATASET_JSON)) as handle:
        handle.write(spec.to_json().encode("utf-8"))
    _write_empty_errors_file(stage_dir, errors)
    for name in (transforms.STATS_FILE, transforms.HASHES_FILE):
        path = FileSystems.join(stage_dir, name)
        if FileSystems.exists(path):
            FileSystems.delete([path])
    staging.publish(stage_dir, output)
    shards = sum(
        len(FileSystems.match([FileSystems.join(output, records.shard_pattern(s, spec.compressed))])[0].metadata_list)
        for s in records.SPLITS
    )
    for warning in [*listing.warnings, *split_warnings]:
        print(f"warning: {warning}", file=sys.stderr)
    return Summary(
        videos=total,
        clips=sum(s["clips"] for s in stats.values()),
        shards=shards,
        failed=len(errors),
        output=output,
        workers=parallel.describe(),
        frames_decoded=decode["frames_decoded"],
        frames_kept=decode["frames_kept"],
        warnings=len(split_warnings),
        reused=decode["videos_reused"],
    )


def _update_cache(cache: reuse.Cache, items, hashed: list[dict]) -> None:
    """Remembers this run's hashes and deletes entries no later run will reuse; a failure costs the next run time only."""
    try:
        reuse.write_memo(cache.root, reuse.memo_rows(items, hashed))
        used = {item.content for item in items if item.content} | {row["sha256"] for row in hashed}
        kept = reuse.keep(cache.root, cache.fingerprint, used)
    except OSError as exc:
        logger.warning("the reuse cache %s was not updated (%s): the next run hashes or decodes more", cache.root, exc)
        return
    logger.info("reuse cache %s: %d entries for these parameters, %d stale deleted", cache.root, kept["entries"], kept["deleted"])


def _check_cache_place(cache_dir: str, output: str, input_path: str) -> None:
    """The cache lies apart from the output (replaced whole on publish) and from the input (it would be listed).

    Raises:
        staging.OutputError: naming both paths and the fix.
    """
    for other, what in ((output, "--output"), (input_path, "--input")):
        relation = staging.overlap(cache_dir, other)
        if relation:
            raise staging.OutputError(
                f"--cache {cache_dir} {relation} {what} {other}: the cache must lie apart from both; "
                f"choose another --cache (the default is {reuse.default_dir(output)}, beside the output)"
            )


def _quiet_direct_workers(beam_args: list[str]) -> list[str]:
    """The DirectRunner's worker processes log at INFO to the job's stderr; keep Beam's chatter out.

    Their own level becomes WARNING with Beam's loggers at ERROR (a bad video's warning from
    ``pipeline.transforms`` still shows), unless the user set the flags; the driver stops
    echoing what the workers send it (:func:`_run`), so each line shows once.
    """
    args = list(beam_args)
    if not any(a.startswith("--default_sdk_harness_log_level") for a in args):
        args.append("--default_sdk_harness_log_level=WARNING")
    if not any(a.startswith("--sdk_harness_log_level_overrides") for a in args):
        args.append('--sdk_harness_log_level_overrides={"apache_beam": "ERROR", "__main__": "ERROR"}')
    return args


def _write_empty_errors_file(stage_dir: str, errors: list[dict]) -> None:
    """A run without errors still leaves an empty errors.jsonl, except on object stores.

    Beam's S3 and GCS writers cannot create zero-byte objects; readers treat a missing
    ``errors.jsonl`` as "no errors".
    """
    path = FileSystems.join(stage_dir, records.ERRORS_JSONL)
    if not errors and "://" not in stage_dir and not FileSystems.exists(path):
        with FileSystems.create(path):
            pass


def _check_error_fraction(errors: list[dict], total: int, cfg: PreprocessConfig, stage_dir: str, output: str) -> None:
    if not total or len(errors) / total <= cfg.max_error_fraction:
        return
    reasons = Counter(e["stage"] for e in errors).most_common()
    raise TooManyErrors(
        f"{len(errors)} of {total} videos failed ({len(errors) / total:.0%} > preprocess.max_error_fraction "
        f"{cfg.max_error_fraction:.0%}; by stage: {', '.join(f'{s} {n}' for s, n in reasons)}): "
        f"see {FileSystems.join(stage_dir, records.ERRORS_JSONL)} (kept until the next run into {output}); "
        "the previous output is left intact"
    )


def _run(argv: list[str] | None) -> None:
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.ERROR)  # worker echo
    args, beam_args = parse_args(argv)
    cfg = Params.load(args.params).preprocess
    cache_dir = None if args.no_cache else (args.cache or reuse.default_dir(args.output))
    print(run(args.input, args.output, cfg, beam_args, cache_dir).line())


main = cli.harness(_run)
