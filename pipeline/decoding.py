"""The decode loops that fill planned clips with frames: ``sequential`` (every frame, in order) and ``seek``.

Both serve each target time with the frame on screen at that time through one
:class:`ClipAssembler`, so they give the same clips; :func:`pipeline.video.iter_clips` picks
the loop (``preprocess.decode``) and falls back from ``seek`` to ``sequential`` on
:class:`SeekMismatch`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any

import av

from pipeline import clips as clip_sampling
from pipeline import keyframes
from pipeline.frames import FrameConverter, encode_image
from pipeline.video_types import (
    NO_LIMITS,
    TIME_TOLERANCE_S,
    TRUNCATION_SLACK_S,
    Deadline,
    DecodeLimits,
    DecodeStats,
    EncodedClip,
    VideoError,
    ffmpeg_errors,
)
from vidseq.params import PreprocessConfig

log = logging.getLogger(__name__)


def aspect(stream: Any) -> Fraction:
    """The stream's sample aspect ratio (1 when it states none)."""
    sar = stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar else Fraction(1)


class ClipAssembler:
    """Fills the planned clips with encoded frames as the stream goes by, in time order.

    Target times are sorted once; each gets a threshold in the stream's pts units
    (``start + (t + tolerance) / time_base``), so that the per-frame test in the decode loop
    is one integer/float comparison.
    """

    def __init__(self, plans: list[clip_sampling.ClipPlan], start_pts: int, time_base: Fraction, tolerance_s: float):
        self.times = sorted({t for plan in plans for t in plan.times})
        position = {t: j for j, t in enumerate(self.times)}
        self._users: list[list[tuple[int, int]]] = [[] for _ in self.times]  # (clip, slot)
        for plan in plans:
            for slot, t in enumerate(plan.times):
                self._users[position[t]].append((plan.index, slot))
        self._length = {plan.index: len(plan.times) for plan in plans}
        self._clips: dict[int, _PartialClip] = {}  # created at a clip's first frame: memory follows the stream
        self._start = start_pts
        self._time_base = float(time_base)
        self._thresholds = [start_pts + (t + tolerance_s) / self._time_base for t in self.times]
        self._thresholds.append(math.inf)
        self.next = 0  # first target not yet served
        self._last: tuple[int, bytes] | None = None  # (frame index, encoded): a frame is encoded once
        self.encoded = 0

    @property
    def target_thresholds(self) -> list[float]:
        """Per target time (sorted), the pts at or below which a frame can serve it."""
        return self._thresholds[:-1]

    @property
    def threshold(self) -> float:
        """Pts above which a frame comes after the next unserved target."""
        return self._thresholds[self.next]

    @property
    def finished(self) -> bool:
        return self.next == len(self.times)

    def seconds(self, pts: int) -> float:
        return (pts - self._start) * self._time_base

    def serve(
        self, frame: av.VideoFrame, frame_index: int, pts: int, until: float, encoder: Callable[[av.VideoFrame], bytes]
    ) -> list[EncodedClip]:
        """Gives ``frame`` every unserved target whose threshold is below ``until``.

        Returns:
            The clips this completed, in index order.
        """
        done = []
        stamp = self.seconds(pts)
        data = None
        while self._thresholds[self.next] < until:
            if data is None:
                if self._last is not None and self._last[0] == frame_index:
                    data = self._last[1]
                else:
                    data = encoder(frame)
                    self._last = (frame_index, data)
                    self.encoded += 1
            for clip_index, slot in self._users[self.next]:
                clip = self._clips.get(clip_index) or self._clips.setdefault(
                    clip_index, _PartialClip(self._length[clip_index])
                )
                if clip.fill(slot, data, frame_index, stamp):
                    done.append(clip.finish(clip_index))
                    del self._clips[clip_index]
            self._users[self.next] = []
            self.next += 1
        return sorted(done, key=lambda c: c.index)


class _PartialClip:
    __slots__ = ("frames", "indices", "stamps", "missing")

    def __init__(self, length: int):
        self.frames: list[bytes] = [b""] * length
        self.indices = [0] * length
        self.stamps = [0.0] * length
        self.missing = length

    def fill(self, slot: int, data: bytes, frame_index: int, stamp: float) -> bool:
        """Fills one slot; True when the clip is complete."""
        self.frames[slot], self.indices[slot], self.stamps[slot] = data, frame_index, stamp
        self.missing -= 1
        return self.missing == 0

    def finish(self, index: int) -> EncodedClip:
        return EncodedClip(index, tuple(self.frames), tuple(self.indices), tuple(self.stamps))


def _land(container: Any, stream: Any, index: keyframes.PacketIndex, key_pts: int) -> Iterator[Any]:
    """Seeks so that demuxing starts at the keyframe ``key_pts``; returns the packets from there.

    Demuxers place a timestamp differently (MP4 with an edit list compares it with shifted
    decode times, so seeking to a keyframe's pts can land one keyframe early): when the first
    packet is an earlier keyframe, one more seek just before the next keyframe is tried, and
    kept if it lands exactly; a landing after ``key_pts`` is retried one keyframe earlier.
    Frames are checked one by one afterwards, so a landing only costs time, never correctness.

    Raises:
        SeekMismatch: the demuxer cannot seek this stream.
    """

    def seek(target: int) -> tuple[Any, Iterator[Any]]:
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise SeekMismatch(f"seeking to pts {target} failed: {exc}") from exc
        packets = iter(container.demux(stream))
        for packet in packets:
            if packet.size:
                return packet, itertools.chain([packet], packets)
            if packet.pts is None and packet.dts is None:  # the end of the stream
                return None, iter(())
        return None, iter(())

    first, packets = seek(key_pts)
    landed = None if first is None else first.pts
    if landed is None or landed == key_pts:
        return packets
    if landed < key_pts:
        following = index.keyframe_after(key_pts)
        if following is not None:
            retry, retry_packets = seek(following - 1)
            if retry is not None and retry.pts == key_pts:
                return retry_packets
            _, packets = seek(key_pts)  # the first landing: early, but every frame is there
        return packets
    earlier = index.keyframe_before(key_pts - 1)
    if earlier is not None:
        _, packets = seek(earlier)
    return packets


class SeekMismatch(Exception):
    """Seeking did not give the frames the packet index promised (internal: ``iter_clips`` falls back)."""


class Timing:
    """What both decode loops derive alike from the stream: time tolerance and the step for frames without pts."""

    def __init__(self, stream: Any):
        rate = stream.average_rate or stream.guessed_rate
        self.rate = float(rate) if rate else None
        self.tolerance = min(TIME_TOLERANCE_S, 0.25 / self.rate) if self.rate else TIME_TOLERANCE_S
        self.step = max(1, round(1 / (rate * stream.time_base))) if rate else 1


def _encoder(stream: Any, cfg: PreprocessConfig) -> Callable[[av.VideoFrame], bytes]:
    converter = FrameConverter(cfg.height, cfg.width, cfg.resize, aspect(stream))

    def encode(frame: av.VideoFrame) -> bytes:
        return encode_image(converter.convert(frame), cfg.frame_encoding, cfg.jpeg_quality)

    return encode


def sequential(
    opened: Any,
    plans: list[clip_sampling.ClipPlan],
    cfg: PreprocessConfig,
    deadline: Deadline,
    timing: Timing,
    stats: DecodeStats,
    limits: DecodeLimits = NO_LIMITS,
    skip: set[int] | frozenset[int] = frozenset(),
    first_pts: int | None = None,
) -> Iterator[EncodedClip]:
    """The sequential loop: every frame once, in order; only served frames are converted.

    Clips whose index is in ``skip`` (already yielded by an abandoned seek pass) are not yielded again.

    Raises:
        SeekMismatch: ``first_pts`` is given (the container was sought back to its start rather
            than opened again) and the first frame has another timestamp; raised before any clip.
    """
    container, stream = opened.container, opened.stream
    encoder = _encoder(stream, cfg)
    assembler: ClipAssembler | None = None
    threshold = math.inf
    held: av.VideoFrame | None = None  # the last frame: it serves targets until the next one starts
    held_pts = held_index = 0
    count = 0

    def finished(clips: list[EncodedClip]) -> list[EncodedClip]:
        return [clip for clip in clips if clip.index not in skip]

    with ffmpeg_errors("decode"):
        for packet in container.demux(stream):
            deadline.check()
            for frame in packet.decode():
                deadline.check()
                stats.frames_decoded += 1
                limits.check_frames(count + 1)
                limits.check_pixels(frame.width, frame.height)
                pts = frame.pts
                if first_pts is not None and count == 0 and pts != first_pts:
                    raise SeekMismatch(f"the stream restarts at pts {pts}, not at its first frame {first_pts}")
                if pts is None:
                    pts = held_pts + timing.step if held is not None else 0
                if assembler is None:
                    start = stream.start_time if stream.start_time is not None else pts
                    assembler = ClipAssembler(plans, start, stream.time_base, timing.tolerance)
                    threshold = assembler.threshold
                if pts > threshold:  # the held frame serves every target before this one
                    if held is None:  # targets before the first frame take the first frame
                        held, held_pts, held_index = frame, pts, count
                    yield from finished(assembler.serve(held, held_index, held_pts, pts, encoder))
                    stats.frames_kept = assembler.encoded
                    if assembler.finished:
                        log.debug("%d frame(s) decoded, %d encoded", count + 1, assembler.encoded)
                        return
                    threshold = assembler.threshold
                held, held_pts, held_index = frame, pts, count
                count += 1
    if held is None or assembler is None:
        raise VideoError("the video stream holds no decodable frame", "decode")
    end = assembler.seconds(held_pts)
    slack = TRUNCATION_SLACK_S + (2 / timing.rate if timing.rate else 0.0)
    if assembler.times[-1] > end + slack:
        raise VideoError(
            f"the stream ends at {end:.2f} s but its metadata says {opened.duration:.2f} s: truncated or corrupt file",
            "decode",
        )
    yield from finished(assembler.serve(held, held_index, held_pts, math.inf, encoder))
    stats.frames_kept = assembler.encoded
    log.debug("%d frame(s) decoded, %d encoded", count, assembler.encoded)


def seek(
    opened: Any,
    plans: list[clip_sampling.ClipPlan],
    cfg: PreprocessConfig,
    deadline: Deadline,
    plan: keyframes.DecodePlan,
    timing: Timing,
    stats: DecodeStats,
    limits: DecodeLimits = NO_LIMITS,
) -> Iterator[EncodedClip]:
    """The seek loop: per decode range, seek to its keyframe and decode forward to its last frame.

    Ranges come sorted and apart, so each seek goes forward. Every frame at or after the
    range's keyframe must have the next timestamp of the index (frames before it, such as an
    open GOP's leading B-frames that reference the previous GOP, are dropped undecoded by
    us); anything else raises :class:`SeekMismatch` and ``iter_clips`` decodes sequentially.

    Raises:
        SeekMismatch: the frames are not those the index predicts.
    """
    container, stream = opened.container, opened.stream
    index = opened.index
    assert index is not None
    pts = index.pts
    start = stream.start_time if stream.start_time is not None else pts[0]
    assembler = ClipAssembler(plans, start, stream.time_base, timing.tolerance)
    encoder = _encoder(stream, cfg)
    for decode_range in plan.ranges:
        deadline.check()
        packets = _land(container, stream, index, decode_range.key_pts)
        stats.seeks += 1
        expected = decode_range.first
        wanted = iter(decode_range.frames)
        want: int | None = next(wanted)
        with ffmpeg_errors("decode"):
            for packet in packets:
                deadline.check()
                for frame in packet.decode():
                    deadline.check()
                    stats.frames_decoded += 1
                    limits.check_frames(stats.frames_decoded)
                    limits.check_pixels(frame.width, frame.height)
                    if frame.pts is None:
                        raise SeekMismatch("a frame without a timestamp")
                    if frame.pts < decode_range.key_pts:
                        continue  # before the keyframe: a leading frame that needs the previous GOP
                    if frame.pts != pts[expected]:
                        raise SeekMismatch(f"frame at pts {frame.pts} where the index has {pts[expected]}")
                    if expected == want:
                        until = pts[expected + 1] if expected + 1 < len(pts) else math.inf
                        yield from assembler.serve(frame, expected, frame.pts, until, encoder)
                        stats.frames_kept = assembler.encoded
                        want = next(wanted, None)
                    expected += 1
                    if want is None:
                        break
                if want is None:
                    break
        if want is not None:
            raise SeekMismatch(f"the stream ended before frame {want}")
    if not assembler.finished:
        raise SeekMismatch("targets left unserved")
    log.debug("%d frame(s) decoded in %d range(s), %d encoded", stats.frames_decoded, len(plan.ranges), assembler.encoded)
