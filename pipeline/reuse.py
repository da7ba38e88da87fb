"""The reuse cache: a re-run decodes only the videos that are new or changed, and re-emits the others' clips.

A video's clips depend on its bytes and on the parameters that shape clips, nothing else; its
label, split and ``video_id`` go into the records only when they are encoded. So the cache
keeps, per video, what decoding produced (each clip's encoded frames, frame indices and
timestamps), keyed by

* the **content**: SHA-256 of the file's bytes, never its name or time alone, and
* the **fingerprint**: the clip-shaping ``preprocess`` parameters (:data:`CLIP_PARAMS`), the
  record format, the PyAV/FFmpeg and Pillow versions and the source of the decoding modules
  (:data:`DECODE_MODULES`), so any change that could change a clip decodes everything again;

and the job encodes the records anew from it, with this run's labels, splits and ids. The
records are byte for byte those of a run from scratch.

Layout under the cache folder (``--cache``; default ``OUTPUT.cache``, beside the output, where
neither the job's publish nor DVC's removal of a stage's outputs reaches)::

    hashes.jsonl                       path, stat, sha256 per listed video (see below)
    params.json                        fingerprints, most recent first (the last PARAM_SETS kept)
    clips/<fingerprint>/<sha[:2]>/<sha>.clips

**Not reading unchanged files.** Hashing every video on every run would read the whole
dataset; so ``hashes.jsonl`` remembers each video's hash with its *stat*: size, ``st_mtime_ns``
and inode on a local disk, size and last-modified time from the listing on object stores (the
metadata Beam's ``FileSystems.match`` returns: no request per file). A video whose stat is
unchanged keeps its hash; any other is read and hashed (in the workers, beside decoding). A
hash is remembered only when the file was last modified at least :data:`SETTLED_S` before it
was read (git's "racily clean" rule: a write within the clock's resolution of the read could
otherwise hide behind an unchanged stat).

**Safety.** Entries are written whole under a temporary name and renamed (locally) or put as
one object (object stores), so a killed run leaves no half entry under a real name; every
entry ends with the SHA-256 of what precedes it, and one that does not check is ignored
(decoded again and rewritten). A failed video is not cached: it is tried again on every run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import struct
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from pipeline import records
from pipeline.video_types import EncodedClip
from vidseq.params import PreprocessConfig

logger = logging.getLogger(__name__)

ENTRY_VERSION = 1
MAGIC = b"vidseq-clips\x00"
CLIP_PARAMS = ("sequence_length", "height", "width", "channels", "fps", "sampling", "clips_per_video",
               "clip_stride", "short_video", "resize", "frame_encoding", "jpeg_quality")  # fmt: skip
DECODE_MODULES = ("clips", "decoding", "frames", "keyframes", "video", "video_types")
HASHES = "hashes.jsonl"
PARAMS = "params.json"
PARAM_SETS = 2  # entries of this many parameter sets are kept: the current one and the one before
SETTLED_S = 2.0  # a hash is remembered only for a file modified at least this long before it was read
_CHUNK = 1 << 20


class CorruptEntry(ValueError):
    """A cache entry that does not check (truncated, overwritten, another format)."""


def default_dir(output: str) -> str:
    """``OUTPUT.cache``: beside the output, never inside it (the job replaces its output whole)."""
    return output.rstrip("/") + ".cache"


def fingerprint(cfg: PreprocessConfig) -> str:
    """What a clip depends on besides the video's bytes, as 16 hex digits."""
    import av
    import PIL

    here = os.path.dirname(os.path.abspath(__file__))
    code = hashlib.sha256()
    for name in DECODE_MODULES:
        with open(os.path.join(here, f"{name}.py"), "rb") as handle:
            code.update(handle.read())
    state = {
        "entry": ENTRY_VERSION,
        "format": records.FORMAT_VERSION,
        "params": {key: getattr(cfg, key) for key in CLIP_PARAMS},
        "av": av.__version__,
        "ffmpeg": {name: list(version) for name, version in sorted(getattr(av, "library_versions", {}).items())},
        "pillow": PIL.__version__,
        "code": code.hexdigest(),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- entries


@dataclasses.dataclass(frozen=True)
class Entry:
    """What decoding one video produced, minus what the records take from the listing."""

    clips: tuple[EncodedClip, ...]
    frames_kept: int = 0
    shorter_than_stated: bool = False


def pack(entry: Entry) -> bytes:
    """``MAGIC``, header length, JSON header (per clip: frame sizes, indices, timestamps), frames, SHA-256."""
    header = {
        "version": ENTRY_VERSION,
        "frames_kept": entry.frames_kept,
        "shorter_than_stated": entry.shorter_than_stated,
        "clips": [
            {"index": c.index, "sizes": [len(f) for f in c.frames], "frame_indices": list(c.frame_indices),
             "timestamps": list(c.timestamps)}  # fmt: skip
            for c in entry.clips
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()  # floats round-trip exactly
    body = MAGIC + struct.pack("<Q", len(head)) + head + b"".join(f for c in entry.clips for f in c.frames)
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes) -> Entry:
    """The entry :func:`pack` wrote.

    Raises:
        CorruptEntry: the bytes are not a whole entry of this version.
    """
    start = len(MAGIC) + 8
    if len(data) < start + 32 or not data.startswith(MAGIC):
        raise CorruptEntry("not a vidseq clips entry (too short or wrong magic)")
    body, digest = data[:-32], data[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise CorruptEntry("checksum mismatch (truncated or overwritten)")
    (length,) = struct.unpack("<Q", body[len(MAGIC) : start])
    try:
        header = json.loads(body[start : start + length])
    except ValueError as exc:
        raise CorruptEntry(f"header is not JSON: {exc}") from None
    if header.get("version") != ENTRY_VERSION:
        raise CorruptEntry(f"entry version {header.get('version')!r}, this vidseq writes {ENTRY_VERSION}")
    offset = start + length
    clips = []
    for clip in header["clips"]:
        frames = []
        for size in clip["sizes"]:
            frames.append(body[offset : offset + size])
            offset += size
        clips.append(EncodedClip(clip["index"], tuple(frames), tuple(clip["frame_indices"]), tuple(clip["timestamps"])))
    if offset != len(body):
        raise CorruptEntry("frame sizes do not add up to the entry's length")
    return Entry(tuple(clips), int(header["frames_kept"]), bool(header["shorter_than_stated"]))


@dataclasses.dataclass(frozen=True)
class Cache:
    """One cache folder and the fingerprint of this run's parameters (picklable: Beam ships it to workers)."""

    root: str
    fingerprint: str

    def entry_path(self, content: str) -> str:
        return FileSystems.join(self.root, "clips", self.fingerprint, content[:2], f"{content}.clips")

    def read(self, content: str) -> Entry | None:
        """The entry of a video's content, or ``None`` when there is none or it does not check."""
        path = self.entry_path(content)
        try:
            if not FileSystems.exists(path):
                return None
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
                return unpack(handle.read())
        except (CorruptEntry, OSError) as exc:  # a damaged entry, or a store that failed to give it: decode
            logger.warning("cache entry %s is ignored and decoded again: %s", path, exc)
            return None

    def write(self, content: str, entry: Entry) -> None:
        """Writes an entry whole: a local temporary file renamed into place, or one object."""
        write_atomically(self.entry_path(content), pack(entry))


def write_atomically(path: str, data: bytes) -> None:
    """Locally a temporary sibling renamed over ``path``; on object stores one PUT (atomic there)."""
    if "://" in path:
        with FileSystems.create(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED) as handle:  # fmt: skip
            handle.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


# --------------------------------------------------------------------------- content hashes


def hash_file(path: str) -> str:
    """SHA-256 of the file's bytes, read in 1 MiB pieces through Beam's filesystems."""
    digest = hashlib.sha256()
    with FileSystems.open(path, mime_type="application/octet-stream", compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def settled(modified: float, read_at: float) -> bool:
    """Whether a hash read at ``read_at`` may be remembered for a file modified at ``modified``."""
    return bool(modified) and read_at - modified >= SETTLED_S


def read_memo(root: str) -> dict[str, tuple[str, str]]:
    """``{path: (stat, sha256)}`` from ``hashes.jsonl``; a missing or damaged file is an empty memo."""
    path = FileSystems.join(root, HASHES)
    memo: dict[str, tuple[str, str]] = {}
    try:
        if not FileSystems.exists(path):
            return memo
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            text = handle.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        logger.warning("the hash memo %s is not read (%s): every video is hashed again", path, exc)
        return memo
    for line in text.splitlines():
        try:
            row = json.loads(line)
            memo[row["path"]] = (row["stat"], row["sha256"])
        except (ValueError, KeyError, TypeError):
            continue  # a damaged line: that video is hashed again
    return memo


def write_memo(root: str, rows: Iterable[tuple[str, str, str]]) -> None:
    """Replaces ``hashes.jsonl`` with ``(path, stat, sha256)`` rows, sorted by path."""
    text = "".join(json.dumps({"path": p, "stat": s, "sha256": h}) + "\n" for p, s, h in sorted(rows))
    write_atomically(FileSystems.join(root, HASHES), text.encode("utf-8"))


# --------------------------------------------------------------------------- housekeeping


def keep(root: str, current: str, used: set[str]) -> dict[str, int]:
    """Deletes what no later run will reuse: entries of ``current`` whose content this run did not list,
    and the entries of all but the :data:`PARAM_SETS` most recent parameter sets.

    Returns:
        ``{"entries": kept entries of this fingerprint, "deleted": entries deleted}``.
    """
    order = [current, *[f for f in _read_param_sets(root) if f != current]]
    write_atomically(FileSystems.join(root, PARAMS), (json.dumps(order[:PARAM_SETS]) + "\n").encode())
    deleted = 0
    stale = []
    kept = 0
    for path in _files_under(FileSystems.join(root, "clips", current)):
        name = path.replace("\\", "/").rsplit("/", 1)[-1]
        content = name.split(".", 1)[0]
        if name.endswith(".clips") and content in used:
            kept += 1
        else:
            stale.append(path)  # a removed or changed video, or a temporary file of a killed run
    for old in order[PARAM_SETS:]:
        stale += _files_under(FileSystems.join(root, "clips", old))
    if stale:
        FileSystems.delete(stale)
        deleted = len(stale)
    return {"entries": kept, "deleted": deleted}


def _read_param_sets(root: str) -> list[str]:
    """The fingerprints ``params.json`` lists, most recent first (empty when missing or damaged)."""
    path = FileSystems.join(root, PARAMS)
    try:
        if not FileSystems.exists(path):
            return []
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            value = json.loads(handle.read())
    except (OSError, ValueError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _files_under(folder: str) -> list[str]:
    try:
        return [m.path for m in FileSystems.match([FileSystems.join(folder.rstrip("/"), "**")])[0].metadata_list]
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix with no objects
        return []


def memo_rows(items: Iterable[Any], hashed: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """The new memo: the listed videos whose hash came from the memo, plus those hashed now and settled."""
    rows = {item.path: (item.path, item.stat, item.content) for item in items if item.content and item.stat}
    for row in hashed:
        if row.get("settled") and row.get("stat"):
            rows[row["path"]] = (row["path"], row["stat"], row["sha256"])
    return list(rows.values())


def known(items: Iterable[Any], memo: Mapping[str, tuple[str, str]]) -> tuple[Any, ...]:
    """The listed videos, each with its content hash where the memo has one for its unchanged stat."""
    out = []
    for item in items:
        remembered = memo.get(item.path)
        if remembered and item.stat and remembered[0] == item.stat:
            item = dataclasses.replace(item, content=remembered[1])
        out.append(item)
    return tuple(out)
