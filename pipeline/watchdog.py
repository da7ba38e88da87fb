"""A wall-clock limit around one call that may be stuck where no deadline check can reach it.

``pipeline.video`` checks its deadline between packets, frames and reads. A call that never
returns to Python — FFmpeg looping inside a decoder, an ``open()`` or ``read()`` blocked in
the kernel on a FIFO or a dead network mount — gets past those checks. :func:`call_with_limit`
runs the call in a daemon thread and stops waiting for it at the limit: the caller records
the video as timed out and goes on with the next one.

What this cannot do: stop the stuck call. Its thread is abandoned, keeps what it holds (the
open file, its frames; a core if it spins) until the worker process ends, which it does not
delay (daemon thread). PyAV releases the GIL inside FFmpeg's open, read, seek and decode
calls, so other threads keep running; a C call that spun while holding the GIL would stop the
whole worker, which no in-process watchdog can help (FFmpeg's own code does not do that).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_abandoned = 0
_lock = threading.Lock()


class Abandoned(Exception):
    """The call did not return within its limit; its thread was left behind."""

    def __init__(self, limit_s: float):
        super().__init__(f"no return within {limit_s:g} s")
        self.limit_s = limit_s


def abandoned() -> int:
    """Calls abandoned so far in this process."""
    return _abandoned


def call_with_limit(fn: Callable[[], T], limit_s: float | None, name: str = "vidseq-decode") -> T:
    """Runs ``fn()`` and returns its result or raises its exception; gives up after ``limit_s``.

    Raises:
        Abandoned: ``fn`` had not returned after ``limit_s`` seconds (None: wait for ever).
    """
    outcome: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread as is
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not done.wait(limit_s):
        global _abandoned
        with _lock:
            _abandoned += 1
        raise Abandoned(limit_s)  # type: ignore[arg-type]
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]
