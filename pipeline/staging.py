"""Claiming, staging and publishing the job's output folder, on any Beam filesystem.

The job never deletes what it did not write. Before any work, :func:`claim` checks that
``--output`` is safe to replace: it does not exist, is an empty folder, or is a records
output (its ``dataset.json`` carries ``records.FORMAT_MARKER`` and it holds only names the
job writes); it is not a file and does not overlap the input. On a local disk ``claim``
also takes a lock (``fcntl.flock`` on ``OUTPUT.lock``, released by the kernel when the
process dies, even by ``kill -9``), repairs a publish that died half-way, removes staging
folders of dead runs and creates this run's staging folder, so an unwritable output fails
before decoding.

The job writes into the staging sibling ``OUTPUT.staging-XXXXXXXX`` and :func:`publish`
swaps it in at the end: one atomic ``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames
whose half-way state (``OUTPUT`` missing, ``OUTPUT.old-XXXXXXXX`` present) the next
``claim`` undoes. On an object store (``gs://``, ``s3://``), where folders are only name
prefixes, there is no lock and no atomic swap: the old objects are deleted and the new ones
renamed, and staging prefixes of dead runs are left for the user to delete.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterable, Iterator

from apache_beam.io.filesystems import FileSystems

from pipeline import records
from vidseq.errors import VidseqError

logger = logging.getLogger(__name__)

_SHARD_NAME = re.compile(
    rf"({'|'.join(records.SPLITS)})-\d{{5,}}-of-\d{{5,}}{re.escape(records.SHARD_SUFFIX)}(\.gz)?"
)
_RENAME_EXCHANGE = 2  # from <linux/fs.h>
_AT_FDCWD = -100


class OutputError(VidseqError, ValueError):
    """``--output`` cannot be used (overlaps the input, holds other data, is locked or unwritable)."""


def _is_local(path: str) -> bool:
    return "://" not in path


def _norm(path: str) -> str:
    """A comparable form of a path: symlinks and ``..`` resolved locally, no trailing slash remotely."""
    return os.path.realpath(path) if _is_local(path) else path.rstrip("/")


def _within(inner: str, outer: str) -> bool:
    sep = os.sep if _is_local(outer) else "/"
    return inner == outer or inner.startswith(outer.rstrip(sep) + sep)


def new_staging_dir(output: str) -> str:
    """A fresh sibling of ``output`` to write into: ``{output}.staging-{random}``."""
    return f"{output.rstrip('/')}.staging-{uuid.uuid4().hex[:8]}"


def _leftover(name: str, base: str) -> bool:
    """Whether ``name`` is a staging or moved-aside folder that a run into ``base`` made."""
    return re.fullmatch(rf"{re.escape(base)}\.(staging|old)-[0-9a-f]{{8}}", name) is not None


# --------------------------------------------------------------------------- checks


def overlap(path: str, other: str) -> str | None:
    """How ``path`` relates to ``other``: ``is``, ``contains``, ``lies inside``, or ``None`` when apart."""
    a, b = _norm(path), _norm(other)
    if a == b:
        return "is"
    if _within(b, a):
        return "contains"
    if _within(a, b):
        return "lies inside"
    return None


def check_apart(output: str, inputs: Iterable[str], what: str = "the input") -> None:
    """Refuses an ``output`` that is, contains or lies inside one of ``inputs``.

    Raises:
        OutputError: naming both paths and the fix.
    """
    for path in inputs:
        relation = overlap(output, path)
        if relation:
            raise OutputError(
                f"--output {output} {relation} {what} {path}: replacing it would delete input; "
                "choose an output folder outside the input"
            )


def _is_records_output(names: list[str], read_dataset_json) -> bool:
    """Whether a folder holding ``names`` is a records output (see the module docstring)."""
    if records.DATASET_JSON not in names:
        return False
    if any(n not in (records.DATASET_JSON, records.ERRORS_JSONL) and not _SHARD_NAME.fullmatch(n) for n in names):
        return False
    try:
        records.DatasetSpec.from_json(read_dataset_json())
    except (records.ContractError, TypeError, AttributeError, OSError, UnicodeDecodeError):
        return False
    return True


def _refuse_other_data(output: str, names: list[str]) -> OutputError:
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    entries = "entry" if len(names) == 1 else "entries"
    return OutputError(
        f"--output {output} already holds {len(names)} {entries} ({shown}) and is not a records output "
        f"(no {records.DATASET_JSON} with format {records.FORMAT_MARKER!r}, or other files beside the records): "
        "the job replaces its output, so choose a new or empty folder, or move that folder away yourself"
    )


def _check_replaceable_local(output: str, target: str) -> None:
    if os.path.lexists(target) and not os.path.isdir(target):
        raise OutputError(f"--output {output} is a file, not a folder: choose a folder path for the records")
    if not os.path.isdir(target):
        return
    names = os.listdir(target)
    if names and not _is_records_output(names, lambda: records.read_text(target, records.DATASET_JSON) or ""):
        raise _refuse_other_data(output, names)


def _check_replaceable_remote(output: str) -> None:
    base = output.rstrip("/")
    if FileSystems.exists(base):
        raise OutputError(f"--output {output} is an object (a file), not a folder: choose a folder prefix for the records")
    names = [f[len(base) + 1 :] for f in _files_under(base)]
    names = [n for n in names if n]  # a "folder/" marker object
    if names and not _is_records_output(names, lambda: records.read_text(base, records.DATASET_JSON) or ""):
        raise _refuse_other_data(output, names)


# --------------------------------------------------------------------------- claiming


@contextlib.contextmanager
def claim(output: str, input_path: str) -> Iterator[str]:
    """Checks, locks and prepares ``output``; yields this run's staging folder.

    Call it before any work. The lock (local outputs only) is held until the block ends,
    so :func:`publish` must be called inside it.

    Raises:
        OutputError: the output overlaps the input, holds other data, is a file, is being
            written by another run, or cannot be written.
    """
    check_apart(output, [input_path])  # a manifest: an output that holds it holds its folder too
    if not _is_local(output):
        _check_replaceable_remote(output)
        yield new_staging_dir(output)
        return
    target = os.path.realpath(output)
    _check_replaceable_local(output, target)  # a refusal writes nothing, not even the lock file
    parent = os.path.dirname(target)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise OutputError(f"cannot write --output {output}: {parent} is a file, not a folder: choose an output in a folder")
    _writable(output, lambda: os.makedirs(parent, exist_ok=True))
    with _locked(output, target + ".lock"):
        _recover(target)
        _check_replaceable_local(output, target)  # again: another run may have published meanwhile
        stage_dir = new_staging_dir(target)
        _writable(output, lambda: os.mkdir(stage_dir))
        yield stage_dir


def _writable(output: str, action) -> None:
    try:
        action()
    except OSError as exc:
        where = exc.filename or output
        raise OutputError(
            f"cannot write --output {output}: {exc.strerror or exc} ({where}): choose an output in a writable folder"
        ) from exc


@contextlib.contextmanager
def _locked(output: str, lock_path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path``; the file is removed again on release."""
    while True:
        fd = -1

        def open_lock() -> None:
            nonlocal fd
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)

        _writable(output, open_lock)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(
                f"--output {output} is being written by another run (it holds {lock_path}): "
                "wait for that run to finish, or choose another --output"
            ) from None
        try:
            current = os.stat(lock_path)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the previous holder removed the file between our open and flock: retry
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # while still locked, so no one else holds this inode
        os.close(fd)


def _recover(target: str) -> None:
    """Undoes a publish that died between its renames and removes what dead runs left.

    Only called under the lock, so no staging folder found here belongs to a live run.
    """
    parent, base = os.path.split(target)
    leftovers = sorted(os.path.join(parent, n) for n in os.listdir(parent) if _leftover(n, base))
    olds = sorted((p for p in leftovers if ".old-" in os.path.basename(p)), key=lambda p: os.stat(p).st_ctime)
    if olds and not os.path.lexists(target):
        os.rename(olds[-1], target)
        logger.warning("restored %s from %s: a run died while publishing", target, olds[-1])
        leftovers.remove(olds[-1])
    for path in leftovers:
        logger.info("removing %s, left by a run that died", path)
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- publishing


def _files_under(folder: str) -> list[str]:
    pattern = FileSystems.join(folder.rstrip("/"), "**")
    try:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix with no objects
        return []


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths with ``renameat2(RENAME_EXCHANGE)``; False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), a)


def publish(staging: str, output: str) -> None:
    """Replaces ``output`` with ``staging``; ``staging`` is gone afterwards.

    Locally the output path never goes missing where the kernel can exchange two folders;
    elsewhere the window between two renames is repaired by the next :func:`claim`.
    """
    output = output.rstrip("/")
    if _is_local(output):
        target = os.path.realpath(output)
        if not os.path.exists(target):
            os.rename(staging, target)
            return
        if _exchange(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now holds the previous output
            return
        old = f"{target}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staging, target)
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
