"""What the video decoding modules share: the error, the clip, decode limits and stats, the deadline.

:mod:`pipeline.video` re-exports the public names; :mod:`pipeline.decoding` and
:mod:`pipeline.video` both raise and fill these.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import av

from vidseq.errors import VidseqError

STAGES = ("open", "probe", "decode", "sample", "timeout", "limit")

# A frame at time f serves target t when f <= t + tolerance; the tolerance absorbs time-base
# rounding (Matroska stores milliseconds: the 3rd frame at 30 fps is at 0.067 s, not 0.0667 s),
# capped at a quarter of a source frame so a frame never serves a time before it really starts.
TIME_TOLERANCE_S = 1e-3
# A stream whose last frame comes this much before a planned time is reported as truncated.
TRUNCATION_SLACK_S = 0.25


class VideoError(VidseqError):
    """A video that cannot be turned into clips.

    Attributes:
        reason: one line naming the problem, e.g. ``no video stream (streams: audio)``.
        stage: where it failed: ``open``, ``probe``, ``decode``, ``sample``, ``timeout`` or
            ``limit`` (a :class:`DecodeLimits` cap).
    """

    def __init__(self, reason: str, stage: str):
        super().__init__(reason)
        self.reason = reason
        self.stage = stage

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across Beam workers
        return (type(self), (self.reason, self.stage))


@dataclasses.dataclass(frozen=True)
class EncodedClip:
    """One clip, ready for :func:`pipeline.records.encode_clip`.

    Attributes:
        index: position of the clip among the video's clips, in time order.
        frames: T encoded images (JPEG or PNG), each H×W×3 RGB.
        frame_indices: source frame number (0-based, decode order) of each frame.
        timestamps: source time in seconds of each frame, relative to the stream start.
    """

    index: int
    frames: tuple[bytes, ...]
    frame_indices: tuple[int, ...]
    timestamps: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class DecodeLimits:
    """Caps on what decoding one video may cost; ``None`` means no cap.

    Attributes:
        max_pixels: width × height of a frame, checked from the stream header before
            decoding and again on every decoded frame (a stream may change size).
        max_frames: frames decoded, and packets read by the index pass.
        max_duration_s: the video's duration (the metadata's, or what the index pass finds when less).
        timeout_s: wall-clock budget for the whole video (the smaller of this and
            ``iter_clips``' ``timeout_s`` applies).
        names: how messages name each cap's setting, e.g. ``{"max_pixels": "VIDSEQ_MAX_PIXELS"}``.
    """

    max_pixels: int | None = None
    max_frames: int | None = None
    max_duration_s: float | None = None
    timeout_s: float | None = None
    names: tuple[tuple[str, str], ...] = ()

    def setting(self, field: str) -> str:
        return dict(self.names).get(field, field)

    def check_pixels(self, width: int, height: int) -> None:
        if self.max_pixels is not None and width * height > self.max_pixels:
            raise VideoError(
                f"frames of {width}x{height} ({width * height} pixels) are over the limit of "
                f"{self.max_pixels} pixels ({self.setting('max_pixels')}): send a smaller video",
                "limit",
            )

    def check_frames(self, count: int) -> None:
        if self.max_frames is not None and count > self.max_frames:
            raise VideoError(
                f"the video has more than {self.max_frames} frames ({self.setting('max_frames')}): "
                "send a shorter video",
                "limit",
            )

    def check_duration(self, duration_s: float) -> None:
        if self.max_duration_s is not None and duration_s > self.max_duration_s:
            raise VideoError(
                f"the video lasts {duration_s:.1f} s, over the limit of {self.max_duration_s:g} s "
                f"({self.setting('max_duration_s')}): send a shorter video",
                "limit",
            )


NO_LIMITS = DecodeLimits()


@dataclasses.dataclass
class DecodeStats:
    """What decoding one video cost; :func:`iter_clips` fills the object it is given.

    Attributes:
        mode: how the frames were reached: ``seek`` or ``sequential``.
        frames_decoded: frames the decoder output (the index pass decodes none).
        frames_kept: distinct frames converted and encoded into clips.
        shorter_than_stated: the container states a longer duration than its packets hold
            (a cut or fragmented file); the clips were planned on what is there.
        fell_back: ``seek`` met a frame the index did not predict and decoding went on
            sequentially from the start.
        seeks: seeks made (``seek`` mode: one per decode range, more where a demuxer lands early).
    """

    mode: str = ""
    frames_decoded: int = 0
    frames_kept: int = 0
    shorter_than_stated: bool = False
    fell_back: bool = False
    seeks: int = 0


class Deadline:
    """A wall-clock limit; ``check()`` raises ``VideoError(stage="timeout")`` once it has passed."""

    def __init__(self, timeout_s: float | None, setting: str = "preprocess.video_timeout_s"):
        self.timeout_s = timeout_s
        self.setting = setting
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    @classmethod
    def of(cls, timeout_s: float | None, limits: DecodeLimits) -> Deadline:
        """The tighter of ``timeout_s`` (the preprocessing's) and ``limits.timeout_s``."""
        if limits.timeout_s is not None and (timeout_s is None or limits.timeout_s < timeout_s):
            return cls(limits.timeout_s, limits.setting("timeout_s"))
        return cls(timeout_s)

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise VideoError(f"decoding took longer than {self.timeout_s:g} s ({self.setting})", "timeout")


@contextlib.contextmanager
def ffmpeg_errors(stage: str) -> Iterator[None]:
    """Turns PyAV/FFmpeg exceptions raised inside the block into ``VideoError(stage)``."""
    try:
        yield
    except av.FFmpegError as exc:
        what = {"open": "not a readable video file", "probe": "cannot read the video stream"}
        detail = exc.strerror or str(exc)
        raise VideoError(f"{what.get(stage, 'decoding failed')}: {detail}", stage) from exc
