"""Inference limits: what one request and one video may cost the served model or ``training.predict``.

:class:`Limits` is read once, at load time, from its defaults, then the model's MLflow
``model_config`` (keys are the field names), then ``VIDSEQ_*`` environment variables (which win)::

    VIDSEQ_MAX_REQUEST_BYTES  67108864  base64/bytes of all video cells of one request
    VIDSEQ_MAX_ROWS           16        rows (videos) per request
    VIDSEQ_MAX_PIXELS         8847360   width x height of a frame (4096x2160), from the stream header
    VIDSEQ_MAX_FRAMES         18000     decoded frames per video (10 min at 30 fps)
    VIDSEQ_MAX_SECONDS        600       stated duration of a video
    VIDSEQ_DECODE_TIMEOUT_S   20        wall-clock decode budget per video
    VIDSEQ_REQUEST_TIMEOUT_S  50        wall-clock budget per request (kept below the server's timeout)
    VIDSEQ_MAX_CONCURRENT     2         requests decoding at once in one server worker

The first two are checked first thing in the pyfunc's ``predict`` (after MLflow has read and
parsed the body, which the model cannot see before); a request over them is refused whole
(:class:`LimitExceeded`). The per-video caps go to :func:`pipeline.video.iter_clips` as
:class:`pipeline.video.DecodeLimits` and stop decoding the moment one is broken. A request that
finds every decode slot taken is refused at once (:class:`Busy`), never queued. No MLflow import.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from vidseq.errors import VidseqError
from vidseq.params import ConfigError
from pipeline.video import DecodeLimits, VideoError

logger = logging.getLogger(__name__)

ENV_PREFIX = "VIDSEQ_"
# MLflow's scoring server answers 504 after this many seconds (``mlflow models serve --timeout``).
SERVER_TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
# per-video caps: Limits field -> DecodeLimits field
_DECODE_FIELDS = {"max_pixels": "max_pixels", "max_frames": "max_frames", "max_seconds": "max_duration_s"}
CLI_FLAGS = {
    "max_pixels": "--max-pixels",
    "max_frames": "--max-frames",
    "max_seconds": "--max-seconds",
    "decode_timeout_s": "--decode-timeout",
}


class LimitExceeded(VidseqError):
    """A request over :class:`Limits`; the message names the limit, its setting and the fix."""


class Busy(VidseqError):
    """Every decode slot of this worker is taken; the client should retry later."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Caps on requests and videos; every field is positive. See the module docstring for the settings."""

    max_request_bytes: int = 64 * 2**20
    max_rows: int = 16
    max_pixels: int = 4096 * 2160
    max_frames: int = 18_000
    max_seconds: float = 600.0
    decode_timeout_s: float = 20.0
    request_timeout_s: float = 50.0
    max_concurrent: int = 2

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = int if field.type == "int" else float
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{env_name(field.name)} must be a positive {kind.__name__}, got {value!r}")
            if kind is int and not isinstance(value, int):
                raise ConfigError(f"{env_name(field.name)} must be a positive int, got {value!r}")

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None) -> Limits:
        """Defaults, then ``config`` (the model's ``model_config``), then ``VIDSEQ_*`` variables.

        The request budget is kept below MLflow's own request timeout when that is set, so a
        slow request ends with per-row ``timeout`` errors rather than MLflow's bare 504.

        Raises:
            ConfigError: naming the variable or key whose value is not a positive number.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        names = {field.name: field.type for field in dataclasses.fields(cls)}
        for key, value in (config or {}).items():
            if key in names:
                values[key] = _number(value, names[key], f"model_config {key}")
        for key, kind in names.items():
            text = environ.get(env_name(key), "").strip()
            if text:
                values[key] = _number(text, kind, env_name(key))
        limits = cls(**values)
        server = environ.get(SERVER_TIMEOUT_ENV, "").strip()
        with contextlib.suppress(ValueError):
            server_s = float(server)
            if 0 < server_s <= limits.request_timeout_s:
                budget = max(0.5, 0.8 * server_s)
                logger.info("request budget %.1f s, below %s=%s", budget, SERVER_TIMEOUT_ENV, server)
                limits = dataclasses.replace(limits, request_timeout_s=budget)
        return limits

    def decode_limits(self, timeout_s: float | None = None, names: Mapping[str, str] | None = None) -> DecodeLimits:
        """The per-video caps for :func:`pipeline.video.iter_clips`.

        Args:
            timeout_s: the decode budget (default ``decode_timeout_s``).
            names: how messages name each setting (default the ``VIDSEQ_*`` variables).
        """
        shown = {key: env_name(key) for key in (*_DECODE_FIELDS, "decode_timeout_s")} | dict(names or {})
        labels = tuple((target, shown[key]) for key, target in _DECODE_FIELDS.items())
        return DecodeLimits(
            max_pixels=self.max_pixels,
            max_frames=self.max_frames,
            max_duration_s=self.max_seconds,
            timeout_s=self.decode_timeout_s if timeout_s is None else timeout_s,
            names=(*labels, ("timeout_s", shown["decode_timeout_s"])),
        )

    def check_request(self, values: Sequence[Any]) -> None:
        """Refuses a request with too many rows or too many video bytes, before any decoding.

        Raises:
            LimitExceeded: naming the limit and its variable.
        """
        if len(values) > self.max_rows:
            raise LimitExceeded(
                f"the request holds {len(values)} rows, over the limit of {self.max_rows} "
                f"({env_name('max_rows')}): send fewer videos per request"
            )
        total = sum(len(value) for value in values if isinstance(value, (str, bytes, bytearray)))
        if total > self.max_request_bytes:
            raise LimitExceeded(
                f"the request's videos hold {total} bytes, over the limit of {self.max_request_bytes} "
                f"({env_name('max_request_bytes')}): send smaller or fewer videos per request"
            )


def env_name(field: str) -> str:
    """``max_pixels`` -> ``VIDSEQ_MAX_PIXELS``."""
    return ENV_PREFIX + field.upper()


def _number(value: Any, kind: str, where: str) -> int | float:
    try:
        number = float(value)
        if kind == "int":
            if number != int(number):
                raise ValueError
            return int(number)
        return number
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a positive {kind}, got {value!r}") from None


class RequestBudget:
    """The wall-clock budget of one request, shared out among its videos."""

    def __init__(self, limits: Limits, names: Mapping[str, str] | None = None):
        self.limits = limits
        self._names = names
        self._ends = time.monotonic() + limits.request_timeout_s

    def video_limits(self) -> DecodeLimits:
        """The next video's caps: its decode budget is cut to what the request has left.

        Raises:
            VideoError: (stage ``timeout``) once the request's budget is spent.
        """
        left = self._ends - time.monotonic()
        if left <= 0:
            raise VideoError(
                f"the request's {self.limits.request_timeout_s:g} s budget is spent "
                f"({env_name('request_timeout_s')}): send fewer videos per request",
                "timeout",
            )
        limits = self.limits.decode_limits(names=self._names)
        if left < limits.timeout_s:
            names = (*limits.names, ("timeout_s", env_name("request_timeout_s")))
            limits = dataclasses.replace(limits, timeout_s=left, names=names)
        return limits


class DecodeGate:
    """At most ``slots`` requests decode at once; one more is refused at once, not queued."""

    def __init__(self, slots: int):
        self.slots = slots
        self._free = threading.BoundedSemaphore(slots)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """Holds a slot for the block.

        Raises:
            Busy: if all slots are taken.
        """
        if not self._free.acquire(blocking=False):
            raise Busy(
                f"busy: {self.slots} request(s) already decoding in this worker "
                f"({env_name('max_concurrent')}): retry in a few seconds"
            )
        try:
            yield
        finally:
            self._free.release()


def release_memory() -> None:
    """Hands freed heap back to the OS (glibc ``malloc_trim``), so a big request leaves no bloat."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
