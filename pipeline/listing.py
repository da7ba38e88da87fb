"""The input's listing for DVC: every listed video's path, size and content hash, in one small JSON file.

``python -m pipeline.listing --input DATA --output data/listing.json [--memo FILE]``

DVC sees a change to what a stage names as a dependency. With ``data.raw_dir`` a folder of
class folders that is every video; with a manifest CSV it is the CSV alone, so a video rewritten
in place would leave the records stale. The ``listing`` stage (``always_changed``: it runs on
every ``dvc repro``) writes this file, and ``preprocess`` depends on it: DVC re-runs
preprocessing exactly when the file's content changes, that is when a listed video's bytes
change, a video is added or removed, or a listed file that was missing appears.

What is written depends only on the videos, never on the machine (a fresh clone writes the same
bytes, so ``dvc.lock`` stays as committed): ``{"input", "videos": [{"video", "size", "md5"}],
"errors": [video ids]}``, sorted by video id; ``errors`` are the entries that cannot become clips
at listing time (a manifest row whose file is missing, a file outside the class folders). A video on an object store (``gs://``, ``s3://``)
is listed by its size and its store's update time instead of an MD5 (hashing would download it).
Reading every byte on every ``dvc repro`` would cost seconds per GB, so MD5s are remembered in
``--memo`` by path, size, modification time and inode, as DVC remembers its own hashes: an
unchanged video is not read again, a touched one is read again and, if its bytes are the same,
changes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import Any

from vidseq import cli

logger = logging.getLogger(__name__)

CHUNK = 1 << 20


def file_md5(path: str) -> str:
    """The MD5 of a local file's bytes, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def local_entry(path: str, memo: dict[str, Any]) -> dict[str, Any]:
    """``{"size", "md5"}`` of a local file; the MD5 from ``memo`` while size, mtime and inode are unchanged.

    ``memo`` (``{absolute path: {"stat": [size, mtime_ns, inode], "md5"}}``) is updated in place.
    """
    stat = os.stat(path)
    key = os.path.abspath(path)
    known = memo.get(key)
    if not (isinstance(known, dict) and known.get("stat") == _stat_key(stat) and known.get("md5")):
        known = {"stat": _stat_key(stat), "md5": file_md5(path)}
        memo[key] = known
    return {"size": stat.st_size, "md5": known["md5"]}


def remote_entry(path: str) -> dict[str, Any]:
    """``{"size", "updated"}`` of a file on an object store, from its metadata (nothing is downloaded)."""
    from apache_beam.io.filesystems import FileSystems

    (metadata,) = FileSystems.match([path], limits=[1])[0].metadata_list
    return {"size": metadata.size_in_bytes, "updated": metadata.last_updated_in_seconds}


def listing(input_path: str, memo: dict[str, Any] | None = None) -> dict[str, Any]:
    """The listing of ``input_path`` (a manifest CSV or a folder of class folders): see the module docstring.

    Raises:
        InputError: the input does not exist, holds no videos, or the manifest is malformed
            (as :func:`pipeline.sources.list_videos`, which finds the videos).
    """
    from pipeline.sources import list_videos
    from vidseq.params import PreprocessConfig

    defaults = PreprocessConfig()  # the splits are not part of the listing: any valid fractions do
    found = list_videos(input_path, defaults.splits, defaults.split_salt)
    memo = {} if memo is None else memo
    videos = []
    for item in sorted(found.items, key=lambda item: item.video_id):
        entry = remote_entry(item.path) if "://" in item.path else local_entry(item.path, memo)
        videos.append({"video": item.video_id, **entry})
    unusable = sorted({str(error.get("path", "")) for error in found.errors})
    return {"input": input_path, "videos": videos, "errors": unusable}


def read_memo(path: str | None) -> dict[str, Any]:
    """The memo at ``path``; empty if there is none or it cannot be read (it is only a cache)."""
    if not path or not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        logger.info("ignoring the unreadable listing memo %s", path)
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: str, data: Mapping[str, Any], *, indent: int | None = 1) -> None:
    """Writes ``data`` to ``path`` atomically (a temporary file renamed over it)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".listing-", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=indent, sort_keys=False)
            out.write("\n")
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.listing", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="a manifest CSV or a folder of class folders (data.raw_dir)")
    parser.add_argument("--output", required=True, help="the listing JSON to write")
    parser.add_argument("--memo", help="where to remember MD5s between runs (a cache: safe to delete)")
    args = parser.parse_args(argv)
    memo = read_memo(args.memo)
    result = listing(args.input, memo)
    write_json(args.output, result)
    if args.memo:  # files that are gone are forgotten; other inputs' files are kept for when they come back
        write_json(args.memo, {k: v for k, v in memo.items() if os.path.exists(k)}, indent=None)
    size = sum(v["size"] for v in result["videos"]) / 2**20
    unusable = f", {len(result['errors'])} unusable (see preprocessing's errors.jsonl)" if result["errors"] else ""
    print(f"listing: {len(result['videos'])} videos ({size:.1f} MiB) in {args.input}{unusable} -> {args.output}")


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
