"""Lineage of a model: the git commit of the code, the DVC hash of its records, their errors.

These become tags and artifacts of the MLflow run (:mod:`training.tracking`), so a registered
version leads back to the exact code (``mlflow.source.git.commit``) and data
(``vidseq.records.dvc_md5``, the hash ``dvc.lock`` gives the records directory) it was
trained on. Everything here degrades gracefully: outside a git or DVC repository the value
is ``None`` (or computed without the repository), never an error.
"""

from __future__ import annotations

import collections
import logging
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import yaml

from pipeline import records

logger = logging.getLogger(__name__)

DVC_LOCK = "dvc.lock"


def git_commit(path: str = ".") -> tuple[str | None, bool]:
    """The commit checked out at ``path`` and whether the work tree differs from it.

    Returns:
        ``(sha, dirty)``; ``(None, False)`` outside a git repository or without git.
    """
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    if not sha:
        return None, False
    status = git("status", "--porcelain", "--untracked-files=no")
    return sha, bool(status)


def _lock_entries(lock: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """``(stage, "outs" | "deps", entry)`` for every path entry of a parsed ``dvc.lock``."""
    for stage, body in (lock.get("stages") or {}).items():
        for kind in ("outs", "deps"):
            for entry in (body or {}).get(kind) or []:
                if isinstance(entry, dict) and "path" in entry:
                    yield stage, kind, entry


def _dir_size(path: str) -> tuple[int, int]:
    """``(files, bytes)`` under ``path``."""
    files = size = 0
    for root, _, names in os.walk(path):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(root, name))
    return files, size


def records_hash_from_lock(records_dir: str, lock_path: str = DVC_LOCK) -> str | None:
    """The md5 that ``dvc.lock`` gives ``records_dir``, if it still describes the directory.

    The stage that writes the records (an ``outs`` entry) wins over stages that read them
    (``deps``); under ``dvc repro`` the writer's entry is fresh when training starts. An
    entry whose file count or size no longer matches the directory is stale and ignored.
    """
    if not os.path.exists(lock_path):
        return None
    with open(lock_path, encoding="utf-8") as handle:
        lock = yaml.safe_load(handle) or {}
    root = os.path.dirname(os.path.abspath(lock_path))
    target = os.path.normpath(os.path.abspath(records_dir))
    found = [
        (kind, entry)
        for _, kind, entry in _lock_entries(lock)
        if os.path.normpath(os.path.join(root, entry["path"])) == target and entry.get("md5")
    ]
    found.sort(key=lambda item: item[0] != "outs")
    if not found:
        return None
    entry = found[0][1]
    if "nfiles" in entry and "size" in entry and os.path.isdir(records_dir):
        if _dir_size(records_dir) != (entry["nfiles"], entry["size"]):
            logger.info("%s: the dvc.lock entry of %s is stale (files or size differ)", lock_path, records_dir)
            return None
    return str(entry["md5"])


def compute_dvc_hash(path: str) -> str | None:
    """The md5 DVC would give ``path`` (``<md5>.dir`` for a directory), computed with dvc-data.

    Returns:
        The hash, or ``None`` if dvc-data is not installed or ``path`` does not exist.
    """
    if not os.path.exists(path):
        return None
    try:
        from dvc_data.hashfile.build import build
        from dvc_data.hashfile.db import HashFileDB
        from dvc_objects.fs.local import LocalFileSystem
        from dvc_objects.fs.memory import MemoryFileSystem
    except ImportError:  # dvc is an optional part of a deployment
        logger.info("dvc-data is not installed: the records hash is not recorded")
        return None
    odb = HashFileDB(MemoryFileSystem(), "/")
    _, _, obj = build(odb, os.path.abspath(path), LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)


def records_hash(records_dir: str, lock_path: str = DVC_LOCK) -> tuple[str | None, str]:
    """The DVC hash of a records directory and where it came from.

    Returns:
        ``(md5, source)``: source is ``dvc.lock`` (read from the lock file), ``computed``
        (hashed the way DVC does, e.g. outside a DVC repository or with a stale lock),
        or ``none`` (remote paths, no dvc-data).
    """
    if "://" in records_dir:
        return None, "none"
    md5 = records_hash_from_lock(records_dir, lock_path)
    if md5:
        return md5, "dvc.lock"
    md5 = compute_dvc_hash(records_dir)
    return (md5, "computed") if md5 else (None, "none")


def errors_summary(records_dir: str, examples: int = 20) -> dict[str, Any]:
    """Summarises the records' ``errors.jsonl``: the videos preprocessing could not use.

    Returns:
        ``{"count", "by_stage": {stage: n}, "by_reason": {reason: n} (most common first),
        "examples": [first few entries]}``; count 0 when the file is missing or empty.
    """
    entries, problems = records.read_errors(records_dir)
    entries += [{"path": problem, "reason": "unparsable line", "stage": "unknown"} for problem in problems]
    by_stage = collections.Counter(str(e.get("stage", "unknown")) for e in entries)
    by_reason = collections.Counter(str(e.get("reason", "unknown")) for e in entries)
    return {
        "count": len(entries),
        "by_stage": dict(by_stage.most_common()),
        "by_reason": dict(by_reason.most_common()),
        "examples": entries[:examples],
    }
