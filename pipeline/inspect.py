"""Inspecting a records directory without TensorFlow: counts, contract checks, a contact sheet.

``python -m pipeline.inspect DIR [--contact-sheet sheet.png]`` reads every shard
(``{split}-NNNNN-of-MMMMM.tfrecord[.gz]``) through :mod:`pipeline.storage` (local, ``s3://``
with the AWS variables, ``gs://`` with Google's default credentials; gzip), parses each clip
with :func:`pipeline.records.decode_clip` (tfrecord-lite) and
decodes each frame with Pillow. It prints, per split, the clips, videos, per-class counts
and the clip shape and encoding found, summarises ``errors.jsonl``, and checks everything
against ``dataset.json``: one line per problem and a non-zero exit code if anything is off.
The contact sheet shows a few clips of each class, frame by frame, as the model sees them.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import io
import logging
import re
import sys
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from pipeline import records, storage
from pipeline.records import ContractError, DatasetSpec
from pipeline.sheets import labelled_sheet
from vidseq import cli

LOGGER = logging.getLogger(__name__)

SHARD_RE = re.compile(r"^(?P<split>\w+?)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord(?P<gz>\.gz)?$")
PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG"}

Clip = dict[str, Any]


@dataclasses.dataclass
class SplitSummary:
    """What one split's shards hold."""

    shards: int = 0
    clips: int = 0
    videos: set[str] = dataclasses.field(default_factory=set)
    classes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    shapes: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


@dataclasses.dataclass
class Report:
    """The outcome of :func:`inspect_records`.

    Attributes:
        spec: the parsed ``dataset.json``.
        splits: per split, what its shards hold.
        errors: ``errors.jsonl`` counts by ``(stage, reason)``.
        problems: one line per mismatch; empty when the directory is consistent.
        samples: per class, up to N clips of distinct videos (decoded frames), for the sheet.
    """

    spec: DatasetSpec
    splits: dict[str, SplitSummary]
    errors: collections.Counter[tuple[str, str]]
    problems: list[str]
    samples: dict[str, list[tuple[str, list[np.ndarray]]]]

    @property
    def clips(self) -> int:
        return sum(s.clips for s in self.splits.values())


# --------------------------------------------------------------------------- reading


def read_records(path: str) -> Iterator[bytes]:
    """Yields the records of one TFRecord file on any store (gzip by extension), CRC-checked.

    Raises:
        ValueError: on a truncated record, a length/data CRC mismatch or a broken gzip stream.
    """
    yield from storage.read_tfrecords(path)


def find_shards(records_dir: str) -> dict[str, list[str]]:
    """Shard paths under ``records_dir`` by split, sorted; other files are ignored."""
    pattern = storage.join(records_dir, "*-of-*" + records.SHARD_SUFFIX + "*")
    found: dict[str, list[str]] = collections.defaultdict(list)
    for path in storage.glob(pattern):
        match = SHARD_RE.match(_basename(path))
        if match:
            found[match["split"]].append(path)
    return {split: sorted(paths) for split, paths in found.items()}


def _basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def count_errors(records_dir: str) -> tuple[collections.Counter[tuple[str, str]], list[str]]:
    """Counts ``errors.jsonl`` by ``(stage, reason)``; a missing file counts nothing.

    Returns:
        The counts and one problem line per unreadable line.
    """
    entries, problems = records.read_errors(records_dir)
    return collections.Counter((str(e["stage"]), str(e["reason"])) for e in entries), problems


# --------------------------------------------------------------------------- checks


def decode_frame(data: bytes) -> Image.Image:
    """Fully decodes one encoded frame with Pillow (raises ``OSError`` if it cannot)."""
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def frame_shape(image: Image.Image) -> tuple[int, int, int]:
    """``(H, W, C)`` of a decoded frame."""
    return image.height, image.width, len(image.getbands())


def check_clip(clip: Clip, spec: DatasetSpec) -> list[str]:
    """Checks one decoded clip against ``dataset.json``; returns one line per problem."""
    problems = []
    t = len(clip[records.FRAMES])
    if t != spec.sequence_length:
        problems.append(f"{t} frames but dataset.json sequence_length is {spec.sequence_length}")
    for key in (records.FRAME_INDICES, records.TIMESTAMPS):
        if len(clip[key]) != t:
            problems.append(f"{len(clip[key])} {key} for {t} frames")
    label = clip[records.LABEL]
    if not 0 <= label < spec.num_classes:
        problems.append(f"label {label} out of range 0..{spec.num_classes - 1} ({spec.num_classes} classes)")
    elif clip[records.LABEL_NAME] != spec.classes[label]:
        problems.append(f"label_name {clip[records.LABEL_NAME]!r} but classes[{label}] is {spec.classes[label]!r}")
    want = (spec.height, spec.width, spec.channels)
    for index, data in enumerate(clip[records.FRAMES]):
        try:
            image = decode_frame(data)
        except OSError as exc:
            problems.append(f"frame {index} does not decode: {exc}")
            break
        if frame_shape(image) != want:
            problems.append(f"frame {index} is HxWxC {frame_shape(image)}, dataset.json says {want}")
            break
        if image.format != PIL_FORMATS[spec.frame_encoding]:
            problems.append(f"frame {index} is {image.format}, dataset.json frame_encoding is {spec.frame_encoding}")
            break
    return problems


def _observed_shape(clip: Clip) -> str:
    """``(T, H, W, C) encoding`` as found in the clip's first frame, for the summary."""
    frames = clip[records.FRAMES]
    try:
        image = decode_frame(frames[0])
    except (OSError, IndexError):
        return f"({len(frames)}, ?, ?, ?) undecodable"
    return f"{(len(frames), *frame_shape(image))} {(image.format or '?').lower()}"


def check_shard_names(split: str, paths: Sequence[str], spec: DatasetSpec) -> list[str]:
    """Checks a split's shard names: one ``-of-M`` count, indices 0..M-1, compression as stated."""
    problems = []
    names = [SHARD_RE.match(_basename(p)) for p in paths]
    counts = sorted({int(m["count"]) for m in names if m})
    indices = sorted(int(m["index"]) for m in names if m)
    if len(counts) > 1:
        problems.append(f"{split}: shards of different sets {['of-%05d' % c for c in counts]}")
    elif counts and indices != list(range(counts[0])):
        missing = sorted(set(range(counts[0])) - set(indices))
        problems.append(f"{split}: {len(paths)} of {counts[0]} shards present, missing indices {missing[:10]}")
    for match in names:
        if match and bool(match["gz"]) != spec.compressed:
            problems.append(f"{match.string}: {'gzip' if match['gz'] else 'uncompressed'} shard, "
                            f"dataset.json compression is {spec.compression}")
    return problems


def check_counts(spec: DatasetSpec, splits: dict[str, SplitSummary], errors: int) -> list[str]:
    """Compares found clips, videos and errors with ``dataset.json``; finds leaked videos."""
    problems = []
    for split in sorted(set(spec.splits) | set(splits)):
        stated = spec.splits.get(split)
        found = splits.get(split, SplitSummary())
        if stated is None:
            problems.append(f"{split}: {found.clips} clips in shards but no such split in dataset.json splits")
            continue
        for key, value in (("clips", found.clips), ("videos", len(found.videos))):
            if key in stated and stated[key] != value:
                problems.append(f"{split}: {value} {key} in shards, dataset.json splits.{split}.{key} is {stated[key]}")
    if errors != spec.errors:
        problems.append(f"{records.ERRORS_JSONL}: {errors} entries, dataset.json errors is {spec.errors}")
    seen: dict[str, str] = {}
    for split, summary in splits.items():
        for video in sorted(summary.videos):
            if video in seen and seen[video] != split:
                problems.append(f"video {video} is in both {seen[video]} and {split}: splits leak")
            seen.setdefault(video, split)
    return problems


# --------------------------------------------------------------------------- the whole directory


def _split_order(names: Sequence[str]) -> list[str]:
    return [s for s in records.SPLITS if s in names] + sorted(set(names) - set(records.SPLITS))


def inspect_records(records_dir: str, samples_per_class: int = 0) -> Report:
    """Reads and checks every record of ``records_dir``.

    Args:
        records_dir: a records directory: local, ``s3://`` or ``gs://``.
        samples_per_class: clips of each class (from distinct videos) to keep for a contact sheet.

    Returns:
        The report; ``report.problems`` is empty when everything matches ``dataset.json``.

    Raises:
        FileNotFoundError: if there is no ``dataset.json``.
        ContractError: if ``dataset.json`` is invalid.
    """
    spec = records.read_spec(records_dir)
    shards = find_shards(records_dir)
    problems: list[str] = []
    splits: dict[str, SplitSummary] = {}
    samples: dict[str, list[tuple[str, list[np.ndarray]]]] = {name: [] for name in spec.classes}
    for split in _split_order(list(shards)):
        summary = splits[split] = SplitSummary(shards=len(shards[split]))
        problems += check_shard_names(split, shards[split], spec)
        for path in shards[split]:
            problems += _inspect_shard(path, spec, summary, samples, samples_per_class)
    if not shards:
        problems.append(f"{records_dir}: no shards named {records.shard_pattern('<split>', spec.compressed)}")
    errors, error_problems = count_errors(records_dir)
    problems += error_problems + check_counts(spec, splits, sum(errors.values()))
    return Report(spec=spec, splits=splits, errors=errors, problems=problems, samples=samples)


def _inspect_shard(
    path: str,
    spec: DatasetSpec,
    summary: SplitSummary,
    samples: dict[str, list[tuple[str, list[np.ndarray]]]],
    samples_per_class: int,
) -> list[str]:
    """Reads one shard into ``summary`` (and ``samples``); returns its problems."""
    problems = []
    name = _basename(path)
    count = 0
    try:
        for serialized in read_records(path):
            problems += _inspect_record(f"{name} #{count}", serialized, spec, summary, samples, samples_per_class)
            count += 1
    except storage.StorageError:  # the store, not the shard: one line for the whole run
        raise
    except (ValueError, OSError, EOFError, zlib.error) as exc:  # framing, CRC or gzip damage
        problems.append(f"{name}: record #{count} unreadable, rest of shard skipped: {exc}")
    return problems


def _inspect_record(
    where: str,
    serialized: bytes,
    spec: DatasetSpec,
    summary: SplitSummary,
    samples: dict[str, list[tuple[str, list[np.ndarray]]]],
    samples_per_class: int,
) -> list[str]:
    """Parses and checks one record, counting it into ``summary``; returns its problems."""
    try:
        clip = records.decode_clip(serialized)
    except (ContractError, RuntimeError, IndexError, UnicodeDecodeError) as exc:  # tfrecord-lite: RuntimeError
        return [f"{where}: not a clip record: {exc}"]
    video = clip[records.VIDEO_ID]
    summary.clips += 1
    summary.videos.add(video)
    summary.classes[clip[records.LABEL_NAME]] += 1
    summary.shapes[_observed_shape(clip)] += 1
    problems = check_clip(clip, spec)
    kept = samples.get(clip[records.LABEL_NAME])
    if not problems and kept is not None and len(kept) < samples_per_class and all(v != video for v, _ in kept):
        kept.append((video, [np.asarray(decode_frame(f).convert("RGB")) for f in clip[records.FRAMES]]))
    return [f"{where} ({video}): {p}" for p in problems]


# --------------------------------------------------------------------------- output


def format_report(report: Report, records_dir: str) -> list[str]:
    """The human-readable summary, one string per line (problems not included)."""
    spec = report.spec
    lines = [
        f"{records_dir}: dataset.json format_version {spec.format_version}, clips (T, H, W, C) = "
        f"{spec.clip_shape}, {spec.frame_encoding} frames, compression {spec.compression}, "
        f"{spec.num_classes} classes"
    ]
    for split, summary in report.splits.items():
        shapes = ", ".join(f"{shape} x{n}" if len(summary.shapes) > 1 else shape for shape, n in summary.shapes.items())
        lines.append(
            f"  {split}: {summary.clips} clips from {len(summary.videos)} videos in {summary.shards} shard(s); "
            f"clips {shapes or '-'}"
        )
        extra = sorted(set(summary.classes) - set(spec.classes))
        counts = [f"{name} {summary.classes[name]}" for name in (*spec.classes, *extra)]
        lines.append("    " + ", ".join(counts))
    total = sum(report.errors.values())
    if total:
        reasons = ", ".join(f"{stage}/{reason} {n}" for (stage, reason), n in report.errors.most_common())
        lines.append(f"  {records.ERRORS_JSONL}: {total} videos without clips: {reasons}")
    else:
        lines.append(f"  {records.ERRORS_JSONL}: no videos without clips")
    return lines


def contact_sheet(
    samples: dict[str, list[tuple[str, list[np.ndarray]]]], spec: DatasetSpec, scale: int = 2
) -> Image.Image:
    """A grid: one row per sampled clip (grouped by class), one column per frame.

    Each row is labelled with its class name and the clip's video file name.
    """
    rows = [(name, _basename(video), frames) for name in spec.classes for video, frames in samples.get(name, [])]
    return labelled_sheet(rows, spec, scale)


def write_png(image: Image.Image, path: str) -> None:
    """Writes ``image`` as PNG to a local path, ``s3://`` or ``gs://``."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    storage.write_bytes(path, buffer.getvalue(), content_type="image/png")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.inspect",
        description="Summarise a records directory and check every record against dataset.json (no TensorFlow).",
    )
    parser.add_argument("records_dir", help="directory with dataset.json and shards (local, gs://, s3://)")
    parser.add_argument("--contact-sheet", metavar="PNG", help="write a PNG grid of a few clips per class")
    parser.add_argument("--clips-per-class", type=int, default=3, help="rows per class in the contact sheet")
    parser.add_argument("--scale", type=int, default=2, help="contact sheet pixels per frame pixel")
    parser.add_argument("--max-problems", type=int, default=100, help="problem lines to print at most")
    args = parser.parse_args(argv)
    for key in ("clips_per_class", "scale", "max_problems"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be positive")
    return args


def _run(argv: list[str] | None) -> int:
    args = parse_args(argv)
    try:
        report = inspect_records(args.records_dir, args.clips_per_class if args.contact_sheet else 0)
    except (FileNotFoundError, ContractError) as exc:
        print(f"PROBLEM: {exc}")
        return 1
    print("\n".join(format_report(report, args.records_dir)))
    if args.contact_sheet:
        write_png(contact_sheet(report.samples, report.spec, args.scale), args.contact_sheet)
        print(f"contact sheet: {args.contact_sheet}")
    for line in report.problems[: args.max_problems]:
        print(f"PROBLEM: {line}")
    if len(report.problems) > args.max_problems:
        print(f"PROBLEM: ... and {len(report.problems) - args.max_problems} more")
    if report.problems:
        print(f"FAILED: {len(report.problems)} problem(s) in {report.clips} clips")
        return 1
    print(f"OK: {report.clips} clips match dataset.json")
    return 0


main = cli.harness(_run, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
