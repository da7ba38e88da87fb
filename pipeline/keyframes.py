"""Keyframe index of a video stream (one demux-only pass) and the decode plan built on it.

:func:`scan` reads every packet of the video stream once, without decoding, and keeps what
planning needs: the presentation timestamp of every frame the decoder will show (packets
that FFmpeg marks *discard*, e.g. before an edit list's start, and empty packets show
nothing), the timestamps of the keyframes, and where the stream really ends. The
container's stated frame count and duration are never trusted for this.

The rest is pure (table-tested in ``tests/test_keyframes.py``):

* :func:`serving_frames` maps each target time's threshold to the frame on screen then,
  exactly as the sequential decode loop does (the last frame at or before it, the first
  frame for targets before the stream starts);
* :func:`plan_ranges` turns the needed frames, sorted by time, into decode ranges: each
  starts at the keyframe at or before its first frame and ends at its last frame; a frame
  whose keyframe is not after the current range's end (or is so close that decoding on is
  cheaper than a seek) joins that range, so ranges never overlap and decoding never seeks
  backwards;
* :func:`choose` picks ``seek`` or ``sequential`` for ``auto`` by the frames each would decode.

Frame numbers are positions in the sorted list of shown timestamps, which is the 0-based
decode-output order of the sequential pass (decoders output frames in presentation order),
so both modes give every frame the same number.
"""

from __future__ import annotations

import bisect
import dataclasses
from array import array
from collections.abc import Callable, Sequence
from typing import Any

# What one seek costs in frames, in auto mode's comparison: the decoder's refill after the
# flush, the demuxer's jump. Small: a seek is cheap next to decoding a GOP.
SEEK_COST_FRAMES = 2


@dataclasses.dataclass(frozen=True)
class PacketIndex:
    """What one demux-only pass found out about a video stream.

    Attributes:
        pts: presentation timestamps (stream time base) of the frames the decoder shows,
            sorted; position ``i`` is frame number ``i``.
        keyframes: timestamps of the keyframe packets, sorted (discarded ones included:
            decoding may have to start there).
        end_pts: where the last shown frame ends (its pts plus its duration).
        seekable: every shown packet has a distinct timestamp, so frames can be found by
            time; when False only a sequential pass is safe.
        packets: packets read.
    """

    pts: Sequence[int]
    keyframes: Sequence[int]
    end_pts: int | None
    seekable: bool
    packets: int

    def __len__(self) -> int:
        return len(self.pts)

    def duration_s(self, start_pts: int, time_base: float) -> float | None:
        """Seconds from ``start_pts`` to the end of the last shown frame; None without frames."""
        if self.end_pts is None:
            return None
        return (self.end_pts - start_pts) * time_base

    def first_at_or_after(self, pts: float) -> int:
        """Number of the first shown frame whose pts is ``>= pts``."""
        return bisect.bisect_left(self.pts, pts)

    def keyframe_after(self, pts: int) -> int | None:
        """The first keyframe timestamp ``> pts``, or None when there is none."""
        position = bisect.bisect_right(self.keyframes, pts)
        return self.keyframes[position] if position < len(self.keyframes) else None

    def keyframe_before(self, pts: int) -> int | None:
        """The last keyframe timestamp ``<= pts``, or None when no keyframe comes that early."""
        position = bisect.bisect_right(self.keyframes, pts)
        return self.keyframes[position - 1] if position else None


@dataclasses.dataclass(frozen=True)
class DecodeRange:
    """Decode from the keyframe ``key_pts`` on, and keep ``frames`` (sorted frame numbers).

    Attributes:
        key_pts: the keyframe to seek to; every frame from here is decodable.
        first: number of the first shown frame at or after ``key_pts``.
        frames: the needed frame numbers, sorted; the range ends at ``frames[-1]``.
    """

    key_pts: int
    first: int
    frames: tuple[int, ...]

    @property
    def last(self) -> int:
        return self.frames[-1]

    @property
    def cost(self) -> int:
        """Frames decoded: from the keyframe's first shown frame to the last needed one."""
        return self.last - self.first + 1


@dataclasses.dataclass(frozen=True)
class DecodePlan:
    """How one video will be decoded.

    Attributes:
        mode: ``seek`` or ``sequential``.
        ranges: the decode ranges (for ``seek``; also computed for ``sequential`` to compare).
        sequential_frames: frames a sequential pass decodes (it stops one frame after the
            last needed one, or at the end).
        seek_frames: frames the ranges decode, plus :data:`SEEK_COST_FRAMES` per seek.
    """

    mode: str
    ranges: tuple[DecodeRange, ...]
    sequential_frames: int
    seek_frames: int


def scan(
    demux: Callable[[], Any],
    default_duration: int,
    check: Callable[[int], None] = lambda count: None,
    check_every: int = 64,
) -> PacketIndex:
    """Builds a :class:`PacketIndex` from the packets that ``demux()`` yields (no decoding).

    Args:
        demux: returns an iterator of PyAV packets of the video stream.
        default_duration: a frame's duration in the time base, for packets that state none.
        check: called with the count of non-empty packets every ``check_every`` of them and
            at the end (deadline and limits; a scan of 9,000 packets takes a few ms).
        check_every: how often ``check`` runs.
    """
    shown = array("q")
    keys = array("q")
    last = None  # the latest shown pts so far, and where that frame ends
    end: int | None = None
    seekable = True
    count = 0
    for packet in demux():
        if not packet.size:  # the flush packet at the end, or an empty (dropped) frame
            continue
        count += 1
        if not count % check_every:
            check(count)
        pts = packet.pts
        if pts is None:
            seekable = False
            continue
        if packet.is_keyframe:
            keys.append(pts)
        if packet.is_discard:
            continue
        shown.append(pts)
        if last is None or pts >= last:
            last = pts
            stop = pts + (packet.duration or default_duration)
            end = stop if end is None else max(end, stop)
    check(count)
    pts_sorted = sorted(shown)
    if any(a == b for a, b in zip(pts_sorted, pts_sorted[1:])):
        seekable = False  # two frames at one time: a frame cannot be found by its timestamp
    return PacketIndex(
        pts=array("q", pts_sorted), keyframes=array("q", sorted(keys)), end_pts=end, seekable=seekable, packets=count
    )


def serving_frames(pts: Sequence[int], thresholds: Sequence[float]) -> list[int]:
    """For each threshold, the number of the frame that serves it.

    The last frame with ``pts <= threshold``; the first frame when none is that early.
    """
    return [max(0, bisect.bisect_right(pts, threshold) - 1) for threshold in thresholds]


def plan_ranges(index: PacketIndex, needed: Sequence[int]) -> tuple[DecodeRange, ...]:
    """Groups the needed frame numbers into non-overlapping decode ranges, in time order.

    A frame starts a new range (a seek forward to its keyframe) when that decodes fewer
    frames, counting :data:`SEEK_COST_FRAMES` for the seek, than decoding on from the current
    range's last frame; a keyframe that is not after that frame never does. A frame with no
    keyframe at or before it (a stream that does not start with one) is decoded from the
    first keyframe-less start: its range begins at the stream's first frame.
    """
    ranges: list[DecodeRange] = []
    key_pts = first = None
    frames: list[int] = []
    for number in sorted(set(needed)):
        key = index.keyframe_before(index.pts[number])
        key = index.pts[0] if key is None else key
        if frames and number - frames[-1] <= number - index.first_at_or_after(key) + 1 + SEEK_COST_FRAMES:
            frames.append(number)  # decoding on to it costs no more than a seek to its keyframe
            continue
        if frames:
            ranges.append(DecodeRange(key_pts, first, tuple(frames)))  # type: ignore[arg-type]
        key_pts, first, frames = key, index.first_at_or_after(key), [number]
    if frames:
        ranges.append(DecodeRange(key_pts, first, tuple(frames)))  # type: ignore[arg-type]
    return tuple(ranges)


def choose(mode: str, index: PacketIndex | None, needed: Sequence[int]) -> DecodePlan:
    """Plans the decoding of one video.

    Args:
        mode: ``auto``, ``sequential`` or ``seek`` (``preprocess.decode``).
        index: the stream's packet index, or None when there is none (a source that cannot
            be read twice): then only ``sequential`` is possible.
        needed: the frame numbers the clips use.

    Returns:
        ``seek`` when asked for (or, for ``auto``, when it decodes fewer frames) and the index
        allows it; ``sequential`` otherwise.
    """
    if index is None or not index.seekable or not len(index) or not needed:
        total = len(index) if index is not None else 0
        return DecodePlan("sequential", (), total, total)
    ranges = plan_ranges(index, needed)
    sequential = min(len(index), max(needed) + 2)
    seek = sum(r.cost for r in ranges) + SEEK_COST_FRAMES * len(ranges)
    use_seek = mode == "seek" or (mode == "auto" and seek < sequential)
    return DecodePlan("seek" if use_seek else "sequential", ranges, sequential, seek)
