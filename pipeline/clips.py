"""Clip sampling: which timestamps make each fixed-length clip of a video (pure, no decoding).

A video of ``duration_s`` seconds is first resampled to ``fps``: the target times are
``t_k = k / fps`` for every ``k >= 0`` with ``t_k < duration_s``, ``N`` of them. Clips are
runs of ``sequence_length`` (``T``) consecutive target times:

* ``uniform``: ``clips_per_video`` clips whose first indices are spread evenly over
  ``[0, N - T]`` (the first clip starts the video, the last one ends it; a single clip is
  centred). When the video has fewer than ``clips_per_video`` distinct clip positions, it
  gives fewer clips rather than duplicates.
* ``sliding``: a clip every ``clip_stride`` target frames: first indices ``0, s, 2s, ... <= N - T``.

A video shorter than one clip (``N < T``) gives one clip made by ``short_video``: ``pad``
repeats the last frame, ``loop`` wraps around to the start, ``skip`` raises
:class:`SamplingError`.

Like PyTorchVideo's ``clip_sampling.py`` this works in timestamps; :mod:`pipeline.video`
maps each time to the source frame shown at that moment.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Protocol

from vidseq.errors import VidseqError

SAMPLINGS = ("uniform", "sliding")
SHORT_VIDEO_POLICIES = ("pad", "loop", "skip")

# Tolerance on N = ceil(duration * fps): a duration that is 1.0000001 s because of a time
# base rounding must not add a target time at exactly the end of the video.
_COUNT_TOLERANCE = 1e-6


class SamplingError(VidseqError, ValueError):
    """No clip can be sampled from a video (unknown duration, or too short with ``skip``)."""


@dataclasses.dataclass(frozen=True)
class ClipPlan:
    """One planned clip.

    Attributes:
        index: position of the clip among the video's clips (0-based, in time order).
        times: the T target times in seconds from the start of the video, in clip order
            (non-decreasing, except where ``short_video=loop`` wraps around).
    """

    index: int
    times: tuple[float, ...]


class SamplingParams(Protocol):
    """The fields of ``PreprocessConfig`` that clip sampling reads."""

    fps: float
    sequence_length: int
    sampling: str
    clips_per_video: int
    clip_stride: int
    short_video: str


def resampled_count(duration_s: float, fps: float) -> int:
    """Number ``N`` of target times ``k / fps`` that fall before ``duration_s``."""
    return max(0, math.ceil(duration_s * fps - _COUNT_TOLERANCE))


def plan_clips(
    duration_s: float | None,
    *,
    fps: float,
    sequence_length: int,
    sampling: Literal["uniform", "sliding"] = "uniform",
    clips_per_video: int = 1,
    clip_stride: int = 1,
    short_video: Literal["pad", "loop", "skip"] = "pad",
) -> list[ClipPlan]:
    """Plans the clips of a video from its duration.

    Args:
        duration_s: the video's duration in seconds.
        fps: the target frame rate that the video is resampled to.
        sequence_length: T, target frames per clip.
        sampling: ``uniform`` or ``sliding`` (see the module docstring).
        clips_per_video: the number of clips for ``uniform``.
        clip_stride: target frames between window starts for ``sliding``.
        short_video: ``pad``, ``loop`` or ``skip`` for a video shorter than one clip.

    Returns:
        The clips in time order, at least one.

    Raises:
        SamplingError: if the duration is unknown, zero or negative, or if the video is
            shorter than one clip and ``short_video`` is ``skip``.
        ValueError: if a parameter is out of range (a bug in the caller: the config
            validates them).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if short_video not in SHORT_VIDEO_POLICIES:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO_POLICIES}, got {short_video!r}")
    if not (fps > 0 and sequence_length > 0 and clips_per_video > 0 and clip_stride > 0):
        raise ValueError(
            f"fps, sequence_length, clips_per_video and clip_stride must be positive, got "
            f"{fps}, {sequence_length}, {clips_per_video}, {clip_stride}"
        )
    if duration_s is None or not math.isfinite(duration_s) or duration_s <= 0:
        raise SamplingError(f"video duration is unknown or not positive ({duration_s!r} s)")

    n = resampled_count(duration_s, fps)
    t = sequence_length
    if n < t:
        indices = [_short_clip(n, t, short_video, duration_s, fps)]
    elif sampling == "uniform":
        indices = [list(range(s, s + t)) for s in uniform_starts(n - t, clips_per_video)]
    else:
        indices = [list(range(s, s + t)) for s in range(0, n - t + 1, clip_stride)]
    return [ClipPlan(i, tuple(k / fps for k in ks)) for i, ks in enumerate(indices)]


def plan_from_config(duration_s: float | None, cfg: SamplingParams) -> list[ClipPlan]:
    """:func:`plan_clips` with its parameters read from a ``PreprocessConfig``."""
    return plan_clips(
        duration_s,
        fps=cfg.fps,
        sequence_length=cfg.sequence_length,
        sampling=cfg.sampling,  # type: ignore[arg-type]
        clips_per_video=cfg.clips_per_video,
        clip_stride=cfg.clip_stride,
        short_video=cfg.short_video,  # type: ignore[arg-type]
    )


def uniform_starts(max_start: int, count: int) -> list[int]:
    """``count`` distinct start indices spread evenly over ``[0, max_start]``.

    One start is centred; several include both ends. Fewer are returned when
    ``[0, max_start]`` holds fewer than ``count`` integers.
    """
    if count == 1:
        return [max_start // 2]
    starts: list[int] = []
    for i in range(count):
        start = math.floor(i * max_start / (count - 1) + 0.5)  # round half up: never collides
        if not starts or start != starts[-1]:
            starts.append(start)
    return starts


def _short_clip(n: int, t: int, policy: str, duration_s: float, fps: float) -> list[int]:
    if n == 0:
        raise SamplingError(f"video is {duration_s:.6f} s, too short for one frame at {fps:g} fps")
    if policy == "skip":
        raise SamplingError(
            f"video is {duration_s:.2f} s ({n} frames at {fps:g} fps), shorter than one clip of "
            f"{t} frames; short_video={policy}"
        )
    if policy == "pad":
        return [min(i, n - 1) for i in range(t)]
    return [i % n for i in range(t)]  # loop
