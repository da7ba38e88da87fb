"""Staging output folders and swapping them into place, on any Beam filesystem.

The job writes into a fresh sibling folder and only replaces the previous output once
everything succeeded, so a failed or interrupted run leaves the previous output intact.
On a local disk the swap is two renames; on an object store (``gs://``, ``s3://``), where
folders are only name prefixes, the old objects are deleted and the new ones renamed.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid

from apache_beam.io.filesystems import FileSystems

logger = logging.getLogger(__name__)


def _is_local(path: str) -> bool:
    return "://" not in path


def new_staging_dir(output: str) -> str:
    """A fresh sibling of ``output`` to write into: ``{output}.staging-{random}``."""
    return f"{output.rstrip('/')}.staging-{uuid.uuid4().hex[:8]}"


def _files_under(folder: str) -> list[str]:
    pattern = FileSystems.join(folder.rstrip("/"), "**")
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix with no objects
        return []


def publish(staging: str, output: str) -> None:
    """Replaces ``output`` with ``staging``; ``staging`` is gone afterwards."""
    output = output.rstrip("/")
    if _is_local(output):
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        old = None
        if os.path.exists(output):
            old = f"{output}.old-{uuid.uuid4().hex[:8]}"
            os.rename(output, old)
        os.rename(staging, output)
        if old:
            shutil.rmtree(old, ignore_errors=True)
        return
    old_files = _files_under(output)
    if old_files:
        FileSystems.delete(old_files)
    new_files = _files_under(staging)
    FileSystems.rename(new_files, [output + f[len(staging.rstrip("/")) :] for f in new_files])
    discard(staging)


def discard(staging: str) -> None:
    """Deletes a staging folder (after a failure), ignoring one that was never created."""
    if _is_local(staging):
        shutil.rmtree(staging, ignore_errors=True)
        return
    files = _files_under(staging)
    if files:
        FileSystems.delete(files)
