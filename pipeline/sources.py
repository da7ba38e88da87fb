"""Finding input videos (class folders or a manifest CSV), their labels, groups and splits.

Everything touches files through ``apache_beam.io.filesystems.FileSystems``, so the input may
live on ``gs://``, ``s3://``, ``hdfs://`` or a local disk (local paths are read without loading
Beam). Listing happens once, when the pipeline is built; the result is a list of :class:`VideoItem` that the Beam job fans out.

Splits are group-aware and deterministic: a stable hash of the group (the manifest's
``group`` column, UCF101's ``_gNN_`` part of the file name, else the video itself) picks the
split, so all clips of one video and of one group land in one split, every run. A manifest's
``split`` column (``train``, ``val`` or ``test``) wins over the draw for its row, so published
split lists (:mod:`pipeline.manifest`) are kept as published.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.records import SPLITS
from vidseq.errors import VidseqError

logger = logging.getLogger(__name__)


class _Files:
    """``FileSystems``' calls this module makes: local paths with the standard library, URLs with Beam.

    Importing Beam costs seconds of start-up; the listing stage (:mod:`pipeline.listing`), which
    ``dvc repro`` runs every time, lists local videos without it. Local results are Beam's
    ``LocalFileSystem``'s: ``match`` of ``ROOT/**`` walks ``ROOT`` (every file, joined by ``os.path.join``).
    """

    @staticmethod
    def _beam():
        from apache_beam.io.filesystems import FileSystems

        return FileSystems

    def exists(self, path: str) -> bool:
        return self._beam().exists(path) if "://" in path else os.path.exists(path)

    def open(self, path: str):
        return self._beam().open(path) if "://" in path else open(path, "rb")

    def join(self, base: str, *paths: str) -> str:
        return self._beam().join(base, *paths) if "://" in base else os.path.join(base, *paths)

    def match(self, patterns: list[str], limits: list[int] | None = None):
        (pattern,) = patterns
        if "://" in pattern or not pattern.endswith(os.sep + "**"):
            return self._beam().match(patterns, limits)
        limit = limits[0] if limits else None
        found = []
        for folder, _, names in os.walk(pattern[:-2]):
            found += [_Metadata(os.path.join(folder, name)) for name in names]
            if limit is not None and len(found) >= limit:
                break
        return [_Match(found[:limit] if limit is not None else found)]


@dataclasses.dataclass(frozen=True)
class _Metadata:
    path: str


@dataclasses.dataclass(frozen=True)
class _Match:
    metadata_list: list


FileSystems = _Files()

MANIFEST_COLUMNS = ("path", "label", "group", "split")
_UCF_GROUP = re.compile(r"_g(\d+)_", re.IGNORECASE)


class InputError(VidseqError, ValueError):
    """The input path or manifest is unusable as a whole; the job stops before any work."""


@dataclasses.dataclass(frozen=True)
class VideoItem:
    """One input video.

    Attributes:
        path: where to open it (any Beam filesystem path).
        video_id: its path relative to the input root (or manifest folder): the record's ``video_id``.
        label: class name.
        group: videos of one group always share a split.
        split: ``train``, ``val`` or ``test``; a manifest's ``split`` column sets it when listed,
            else :func:`list_videos` draws it.
        stat: what the listing says of the file (:func:`stat_of`), for the reuse cache's hash memo.
        modified: its last-modified time, seconds since the epoch (0: unknown).
        content: SHA-256 of its bytes when the memo knows it for this ``stat``
            (:mod:`pipeline.reuse`); empty: the worker hashes the file.
    """

    path: str
    video_id: str
    label: str
    group: str
    split: str = ""
    stat: str = ""
    modified: float = 0.0
    content: str = ""


@dataclasses.dataclass(frozen=True)
class Listing:
    """What :func:`list_videos` found.

    Attributes:
        items: the videos to process, in a stable order.
        classes: sorted class names; position is the label.
        errors: ``{path, reason, stage}`` dicts for inputs that cannot become clips
            (e.g. a manifest row pointing at a missing file); they go to ``errors.jsonl``.
        warnings: one-line notes for the summary (e.g. an empty class folder).
    """

    items: tuple[VideoItem, ...]
    classes: tuple[str, ...]
    errors: tuple[dict, ...] = ()
    warnings: tuple[str, ...] = ()


def list_videos(input_path: str, fractions: Mapping[str, float], salt: str = "vidseq") -> Listing:
    """Lists the videos of a class-folder tree or a manifest CSV and assigns their splits.

    Raises:
        InputError: the path does not exist, holds no videos, or the manifest is malformed.
    """
    if _is_manifest(input_path):
        listing = _list_manifest(input_path)
    else:
        listing = _list_class_folders(input_path.rstrip("/"))
    if not listing.items and not listing.errors:
        raise InputError(
            f"no videos found under {input_path}: expected class folders (ROOT/<class>/<video>) "
            "or a manifest CSV with columns path,label[,group][,split]"
        )
    items = tuple(
        item if item.split else dataclasses.replace(item, split=assign_split(item.group, fractions, salt))
        for item in listing.items
    )
    return dataclasses.replace(listing, items=items)


def _is_manifest(path: str) -> bool:
    if path.lower().endswith(".csv"):
        if not FileSystems.exists(path):
            raise InputError(f"manifest {path} does not exist: pass an existing manifest CSV or a folder of class folders")
        return True
    return False


def _list_class_folders(root: str) -> Listing:
    if not FileSystems.exists(root) and not _has_children(root):
        raise InputError(f"input path {root} does not exist: pass a folder of class folders or a manifest CSV")
    files = {m.path: m for m in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list}
    items, errors = [], []
    for path in sorted(files):
        rel = _relative(root, path)
        parts = rel.split("/")
        if any(part.startswith(".") for part in parts) or rel.endswith("/"):
            continue  # hidden files (.DS_Store, ...) and object-store folder markers
        if len(parts) != 2:
            errors.append(
                {
                    "path": rel,
                    "reason": "not directly inside a class folder: move it to ROOT/<class>/ or use a manifest CSV",
                    "stage": "list",
                }
            )
            continue
        stat, modified = stat_of(path, files[path])
        items.append(VideoItem(path=path, video_id=rel, label=parts[0], group=group_of(rel, parts[0]),
                               stat=stat, modified=modified))  # fmt: skip
    classes = tuple(sorted({item.label for item in items}))
    warnings = tuple(
        f"class folder {name!r} holds no videos and is left out of the classes"
        for name in _empty_local_folders(root, classes)
    )
    for warning in warnings:
        logger.warning(warning)
    return Listing(items=tuple(items), classes=classes, errors=tuple(errors), warnings=warnings)


def _has_children(root: str) -> bool:
    """Whether anything lies under ``root``; on object stores a folder exists only through its objects."""
    try:
        return bool(FileSystems.match([FileSystems.join(root, "**")], limits=[1])[0].metadata_list)
    except Exception:  # noqa: BLE001 - a failed match of a missing prefix is "no children"
        return False


def _empty_local_folders(root: str, classes: Sequence[str]) -> list[str]:
    """Class folders without videos; only a local disk has folders that can be empty."""
    if "://" in root or not os.path.isdir(root):
        return []
    return sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".") and entry.name not in classes
    )


def _relative(root: str, path: str) -> str:
    rel = path[len(root) :].lstrip("/")
    return rel.replace(os.sep, "/")


def _list_manifest(manifest: str) -> Listing:
    with FileSystems.open(manifest) as handle:
        text = handle.read().decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in reader.fieldnames or []]
    unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
    if unknown or "path" not in columns or "label" not in columns:
        raise InputError(
            f"manifest {manifest} has columns {columns}"
            + (f", unknown: {unknown}" if unknown else "")
            + "; expected path,label[,group][,split]"
        )
    base = posixpath.dirname(manifest) if "://" in manifest else os.path.dirname(manifest)
    items, errors = [], []
    for line, row in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        rel, label = row.get("path", ""), row.get("label", "")
        if not rel or not label:
            errors.append({"path": rel or f"{manifest}:{line}", "reason": f"manifest line {line} lacks path or label", "stage": "list"})
            continue
        path = rel if ("://" in rel or os.path.isabs(rel)) else FileSystems.join(base, rel)
        found, metadata = _find(path)
        if not found:
            errors.append({"path": rel, "reason": f"file not found (manifest line {line}): {path}", "stage": "list"})
            continue
        split = row.get("split", "")
        if split and split not in SPLITS:
            raise InputError(
                f"manifest {manifest} line {line}: split {split!r} is not one of {', '.join(SPLITS)}: "
                "fix the split column (or leave it empty to draw the split from the group)"
            )
        group = row.get("group") or group_of(rel, label)
        stat, modified = stat_of(path, metadata)
        items.append(VideoItem(path=path, video_id=rel, label=label, group=group, split=split, stat=stat, modified=modified))
    items.sort(key=lambda item: item.video_id)
    classes = tuple(sorted({item.label for item in items}))
    return Listing(items=tuple(items), classes=classes, errors=tuple(errors))


def _find(path: str) -> tuple[bool, Any | None]:
    """Whether a manifest's file exists, and its listing metadata where the store gives it.

    One request per file on an object store, as the existence check alone costs; locally
    :func:`stat_of` reads the stat itself.
    """
    if "://" not in path:
        return os.path.isfile(path), None
    if any(c in path for c in "*?["):  # a name, not a pattern: checked as such, without metadata
        return FileSystems.exists(path), None
    try:
        found = FileSystems.match([path])[0].metadata_list
    except Exception:  # noqa: BLE001 - a missing object fails the match; exists() tells it from a bad store
        return FileSystems.exists(path), None
    return bool(found), (found[0] if found else None)


def stat_of(path: str, metadata: Any | None) -> tuple[str, float]:
    """A file's stat for the hash memo and its last-modified time (seconds since the epoch).

    Local: size, ``st_mtime_ns``, inode. Elsewhere: size and last-modified time from the
    listing's ``FileMetadata`` (``""`` when the store gives no time: such a file is always hashed).
    """
    if "://" not in path:
        try:
            st = os.stat(path)
        except OSError:  # gone since the listing: decoding reports it
            return "", 0.0
        return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}", st.st_mtime
    updated = float(getattr(metadata, "last_updated_in_seconds", 0.0) or 0.0)
    if metadata is None or not updated:
        return "", 0.0
    return f"{metadata.size_in_bytes}:{updated!r}", updated


def group_of(video_id: str, label: str) -> str:
    """The group a video belongs to: UCF101's ``_gNN_`` within its class, else the video itself."""
    match = _UCF_GROUP.search(posixpath.basename(video_id))
    if match:
        return f"{label}/g{int(match.group(1)):02d}"
    return video_id


def assign_split(group: str, fractions: Mapping[str, float], salt: str = "vidseq") -> str:
    """Picks a split for a group by a stable hash: same group, same salt -> same split, on any machine.

    Args:
        group: the group key.
        fractions: ``{split: fraction}`` over ``train``, ``val``, ``test``; they add up to 1.
        salt: changes the draw while keeping it deterministic.

    Returns:
        The split name.
    """
    digest = hashlib.sha256(f"{salt}\x00{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    chosen = None
    for split in SPLITS:
        fraction = fractions.get(split, 0.0)
        if fraction <= 0:
            continue
        chosen = split
        cumulative += fraction
        if u < cumulative:
            return split
    return chosen or "train"
