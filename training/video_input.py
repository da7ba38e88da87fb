"""Video inputs: a served ``video`` cell or a local path, turned into something PyAV opens, safely.

A served cell is base64 (a ``data:`` URL prefix allowed) or raw bytes. A path on the server is
read only when the operator names an allowed folder (``VIDSEQ_SERVE_ALLOWED_ROOT``); the path is
resolved (symlinks, ``..``) and must stay inside it. A path that is outside, missing, not a
regular file or unreadable gets one and the same message, so a client cannot learn which files
exist. ``training.predict`` reads the user's own files: :func:`check_local_file` says what is
wrong with a path without opening it (a FIFO would block). No MLflow import.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import stat
from collections.abc import Mapping
from typing import Any, BinaryIO

from vidseq.params import ConfigError
from pipeline.video import VideoError

ALLOWED_ROOT_ENV = "VIDSEQ_SERVE_ALLOWED_ROOT"
PATH_ROWS_OFF = (
    "not base64 video bytes; path rows are off on this server "
    f"(its operator can set {ALLOWED_ROOT_ENV} to serve the files of one folder)"
)
PATH_REFUSED = f"not base64 video bytes, nor a readable video file in the server's allowed folder ({ALLOWED_ROOT_ENV})"
_MAX_PATH = 4096  # PATH_MAX: a longer cell is never a path (and base64 cells hold many '/')


def allowed_root(environ: Mapping[str, str] | None = None) -> str | None:
    """The folder whose files served rows may name, resolved; ``None`` (path rows off) if unset.

    Raises:
        ConfigError: if the variable names no folder.
    """
    value = (os.environ if environ is None else environ).get(ALLOWED_ROOT_ENV, "").strip()
    if not value:
        return None
    if not os.path.isdir(value):
        raise ConfigError(
            f"{ALLOWED_ROOT_ENV}={value} is not a folder: name the folder of videos to serve, or unset it"
        )
    return os.path.realpath(value)


def open_video(value: Any, root: str | None = None) -> tuple[Any, str]:
    """Turns a served ``video`` cell into something PyAV opens and a name for messages.

    Args:
        value: the video's bytes in base64 (``data:`` URL prefix allowed), raw ``bytes``, or
            with ``root`` a path to a regular file inside ``root`` (relative paths are taken
            from ``root``).
        root: the allowed folder (resolved), or ``None`` for no path rows.

    Returns:
        ``(binary file object, name)``; the caller closes it.

    Raises:
        VideoError: (stage ``open``) for anything else.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(value)), f"<{len(value)} bytes>"
    if not isinstance(value, str) or not value.strip():
        raise VideoError(f"expected base64 video bytes, got {type(value).__name__}", "open")
    if root is not None:
        handle = _open_inside(value, root)
        if handle is not None:
            return handle, value
    data = _base64(value)
    if data:
        return io.BytesIO(data), f"<{len(data)} base64-decoded bytes>"
    raise VideoError(PATH_REFUSED if root is not None else PATH_ROWS_OFF, "open")


def _base64(value: str) -> bytes:
    text = value.strip()
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _open_inside(value: str, root: str) -> BinaryIO | None:
    """An open regular file that ``value`` names inside ``root``, else ``None`` (whatever the reason)."""
    if len(value) > _MAX_PATH or "\0" in value:
        return None
    path = os.path.realpath(os.path.join(root, value))
    if os.path.commonpath([root, path]) != root:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the worker
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return os.fdopen(fd, "rb")
    except OSError:
        os.close(fd)
        return None


def check_local_file(path: str) -> str | None:
    """What stops ``path`` from being read as a video, without opening it; ``None`` if it is a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return f"no such file: {path}"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if stat.S_ISREG(mode):
        return None
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
    return f"not a regular file: {path} is {kind}: give a video file"
