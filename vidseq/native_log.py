"""TensorFlow's native start-up log held to ``TF_CPP_MIN_LOG_LEVEL``, which its Abseil lines ignore.

Importing TensorFlow 2.21 loads two native libraries whose Abseil logging writes, before anything
can configure it, on every start::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796114732.066300    9861 port.cc:153] oneDNN custom operations are on. ...
    I0000 00:00:1796114732.066611    9861 cudart_stub.cc:31] Could not find cuda drivers on your machine, ...

(twice). No variable silences them (``TF_CPP_MIN_LOG_LEVEL``, ``GLOG_minloglevel``,
``ABSL_MIN_LOG_LEVEL`` were tried); they are written to file descriptor 2 from C++. So
:func:`install` puts a one-shot import hook in front of ``tensorflow``: while its module runs,
descriptor 2 goes to a temporary file; afterwards every line is written back in order except the
Abseil lines below the level ``TF_CPP_MIN_LOG_LEVEL`` asks for (``I`` < 1, ``W`` < 2, ``E`` < 3,
the ``absl::InitializeLog()`` preamble with them). Anything else printed meanwhile (Python
warnings, other libraries) comes back unchanged, and nothing is held after the import.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

MODULE = "tensorflow"
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
# Abseil's prefix: severity letter and MMDD, time (seconds since 1970 before InitializeLog), thread id, file:line]
ABSL_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ [^\s\]]+:\d+\] ")
LEVELS = {"I": 0, "W": 1, "E": 2}  # TF_CPP_MIN_LOG_LEVEL hides a severity when it is above its number


def min_level() -> int:
    """``TF_CPP_MIN_LOG_LEVEL`` as a number (0, TensorFlow's default, when unset or not a number)."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def dropped(line: str, level: int) -> bool:
    """Whether ``line`` is an Abseil line (or the preamble) that ``TF_CPP_MIN_LOG_LEVEL=level`` hides."""
    text = line.rstrip("\r\n")
    if text == PREAMBLE:
        return level > 0  # printed just before the first Abseil line, whatever its severity
    match = ABSL_LINE.match(text)
    return bool(match) and LEVELS.get(match.group(1), 3) < level  # F(atal) is never dropped


@contextlib.contextmanager
def filtered_stderr(drop: Callable[[str], bool]) -> Iterator[None]:
    """Holds what is written to descriptor 2 inside the block; then writes back each line ``drop`` keeps."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(keepends=True) if not drop(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


class _HeldLoader(importlib.abc.Loader):
    """Runs the real loader's ``exec_module`` inside :func:`filtered_stderr`; everything else is the real loader's."""

    def __init__(self, inner: Any):
        self._inner = inner

    def create_module(self, spec: Any) -> Any:
        return self._inner.create_module(spec)

    def exec_module(self, module: Any) -> None:
        level = min_level()
        if level <= 0:
            self._inner.exec_module(module)
            return
        with filtered_stderr(lambda line: dropped(line, level)):
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Hook(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` the usual way, once, and hands back its spec with a :class:`_HeldLoader`."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != MODULE:
            return None
        uninstall()  # before looking it up: the other finders answer, as without the hook
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _HeldLoader(spec.loader)
        return spec


def install() -> bool:
    """Puts the hook in front of the ``tensorflow`` import; ``False`` if TensorFlow is already imported."""
    if MODULE in sys.modules:
        return False
    if not any(isinstance(finder, _Hook) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Hook())
    return True


def uninstall() -> None:
    """Removes the hook (it removes itself when TensorFlow is imported)."""
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, _Hook)]
