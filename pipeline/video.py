"""PyAV video decoding: probe a video and stream its fixed-length clips as encoded frames.

:func:`iter_clips` is what the Beam job and ``training.predict`` call:

1. a demux-only pass over the packets (:mod:`pipeline.keyframes`) gives the frames' times,
   the keyframes and the true duration (a header that states more than the file holds, as a
   cut or fragmented file's does, is overruled); :mod:`pipeline.clips` plans the clips from it;
2. each planned target time ``t`` is served by the source frame on screen at ``t`` (the last
   frame whose time is ``<= t``, within a tolerance so that equal rates map one to one;
   targets before the first frame take the first frame, those after the last frame the last);
3. ``preprocess.decode`` says how the frames are reached: ``sequential`` decodes every frame
   once, in order, up to the last one needed; ``seek`` seeks to the keyframe at or before each
   run of needed frames and decodes forward, never backwards; ``auto`` takes whichever decodes
   fewer frames. Every decoded frame is checked against the index (its timestamp must be the
   next one expected); a mismatch falls back to ``sequential``, so the records are the same
   in every mode;
4. a frame that serves no target is dropped without any conversion; a frame that serves
   one or more is converted once (swscale: colour conversion + scale in one C pass, then an
   ndarray rotation for the display matrix, a centre crop or a letterbox pad) and encoded
   once; overlapping clips share the encoded bytes;
5. each clip is yielded as soon as its last frame is ready, so memory stays bounded however
   long the video is.

A caller that decodes untrusted input (the served model) passes :class:`DecodeLimits`: frame
size checked from the stream header before any frame is decoded, a cap on decoded frames and
on the duration, and a wall-clock budget; breaking one stops decoding at once.

Bad input raises :class:`VideoError` (``reason``, ``stage``), never a PyAV exception. An error
met part way through the stream is raised when it is met: the clips yielded before it are
complete and correct, the caller decides whether to keep them (``list(iter_clips(...))``
gives all-or-nothing). A source that cannot be read twice (a pipe) gets no index: it is
decoded sequentially, planned on its stated duration, and a stream that ends well before
that duration is such an error (a truncated file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from typing import Any, BinaryIO, Union

import av
import numpy as np

from pipeline import clips as clip_sampling
from pipeline import keyframes
from pipeline.frames import FrameConverter, decode_image, display_size, encode_image
from vidseq.errors import VidseqError
from vidseq.params import PreprocessConfig

__all__ = [
    "DecodeLimits", "DecodeStats", "EncodedClip", "VideoError", "VideoInfo", "decode_image", "iter_clip_arrays", "iter_clips", "probe",
]  # fmt: skip

log = logging.getLogger(__name__)

Source = Union[str, "os.PathLike[str]", BinaryIO]
STAGES = ("open", "probe", "decode", "sample", "timeout", "limit")

# A frame at time f serves target t when f <= t + tolerance; the tolerance absorbs time-base
# rounding (Matroska stores milliseconds: the 3rd frame at 30 fps is at 0.067 s, not 0.0667 s),
# capped at a quarter of a source frame so a frame never serves a time before it really starts.
_TIME_TOLERANCE_S = 1e-3
# A stream whose last frame comes this much before a planned time is reported as truncated.
_TRUNCATION_SLACK_S = 0.25


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
class VideoInfo:
    """What :func:`probe` finds out about a video.

    Attributes:
        duration_s: duration of the video stream in seconds.
        fps: average frame rate, or ``None`` if the file does not state one.
        width: display width in pixels, after rotation (a portrait phone video is narrow).
        height: display height in pixels, after rotation.
        rotation: counter-clockwise degrees that the display matrix rotates stored frames by.
        frame_count: number of frames if the container states it, else ``None``.
        codec: FFmpeg's decoder name, e.g. ``h264``.
    """

    duration_s: float
    fps: float | None
    width: int
    height: int
    rotation: int
    frame_count: int | None
    codec: str


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
        max_frames: frames decoded (or packets demuxed when scanning for the duration).
        max_duration_s: the video's duration, from the metadata or the demux scan.
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


# --------------------------------------------------------------------------- public API


def probe(source: Source, name: str = "") -> VideoInfo:
    """Reads a video's duration, rate, size, rotation, frame count and codec.

    Decodes at most the first frame (for the rotation); a demux-only pass finds the duration
    of files whose metadata lacks it.

    Raises:
        VideoError: if the file is not a readable video.
    """
    with _open_video(source, name, _Deadline(None), threads=0) as opened:
        opened.rewind()
        container, stream, duration = opened.container, opened.stream, opened.duration
        with _errors("decode"):
            first = next(container.decode(stream), None)
        if first is None:
            raise VideoError("the video stream holds no decodable frame", "decode")
        rotation = first.rotation
        width, height = display_size(first.width, first.height, rotation, _aspect(stream))
        rate = stream.average_rate or stream.guessed_rate
        return VideoInfo(
            duration_s=duration,
            fps=float(rate) if rate else None,
            width=width,
            height=height,
            rotation=rotation,
            frame_count=stream.frames or None,
            codec=stream.codec_context.name,
        )


def iter_clips(
    source: Source,
    cfg: PreprocessConfig,
    *,
    name: str = "",
    timeout_s: float | None = None,
    limits: DecodeLimits = NO_LIMITS,
    stats: DecodeStats | None = None,
) -> Iterator[EncodedClip]:
    """Decodes what a video's clips need and yields the clips, each as soon as it is complete.

    Args:
        source: a local path or a readable binary file object (seekable for most formats).
        cfg: the ``preprocess`` parameters (sampling, size, resize mode, encoding, threads,
            ``decode`` mode).
        name: how to name the video in log messages.
        timeout_s: time limit for the whole video, checked per packet, per frame and in
            every read of a file object; ``None`` for no limit.
        limits: caps for untrusted input (frame size, frames, duration, time budget).
        stats: filled with what decoding cost (mode, frames decoded and kept).

    Yields:
        :class:`EncodedClip` objects in time order; the same in every ``decode`` mode.

    Raises:
        VideoError: for a file that is not a video, has no video stream, breaks while
            decoding, is too short with ``short_video=skip``, takes too long, or breaks
            one of ``limits`` (stage ``limit``).
    """
    stats = stats if stats is not None else DecodeStats()
    deadline = _Deadline.of(timeout_s, limits)
    with _open_video(source, name, deadline, cfg.decode_threads, limits, index=True) as opened:
        stats.shorter_than_stated = opened.shorter_than_stated
        try:
            plans = clip_sampling.plan_from_config(opened.duration, cfg)
        except clip_sampling.SamplingError as exc:
            raise VideoError(str(exc), "sample") from exc
        timing = _Timing(opened.stream)
        index = opened.index
        plan = keyframes.choose("sequential", None, ())
        if index is not None and index.seekable and len(index):
            start = opened.stream.start_time if opened.stream.start_time is not None else index.pts[0]
            thresholds = _ClipAssembler(plans, start, opened.stream.time_base, timing.tolerance).target_thresholds
            plan = keyframes.choose(cfg.decode, index, keyframes.serving_frames(index.pts, thresholds))
        log.debug(
            "%s: %.2f s, %d clip(s) planned, %s (sequential %d frames, seek %d)",
            name, opened.duration, len(plans), plan.mode, plan.sequential_frames, plan.seek_frames,
        )  # fmt: skip
        stats.mode = plan.mode
        done: set[int] = set()
        if plan.mode == "seek":
            try:
                for clip in _seek_clips(opened, plans, cfg, deadline, plan, timing, stats, limits):
                    done.add(clip.index)
                    yield clip
                return
            except _SeekMismatch as exc:
                log.info("%s: seeking did not find the frames the index promised (%s); decoding sequentially", name, exc)
                stats.mode, stats.fell_back = "sequential", True
                opened.reopen()
        opened.rewind()
        yield from _decode_clips(opened, plans, cfg, deadline, timing, stats, limits, skip=done)


def iter_clip_arrays(
    source: Source,
    cfg: PreprocessConfig,
    *,
    name: str = "",
    timeout_s: float | None = None,
    limits: DecodeLimits = NO_LIMITS,
) -> Iterator[tuple[EncodedClip, np.ndarray]]:
    """Like :func:`iter_clips`, with each clip's frames decoded back into a (T, H, W, 3) array.

    The arrays are decoded from the encoded frames with Pillow, for looking at clips without
    TensorFlow. JPEG decoders differ by a few levels, so code that feeds a model (predict,
    serving) decodes with training's own parser instead (``training.data.parse_clip``).
    """
    previous: dict[int, np.ndarray] = {}  # source frame index -> array, of the last clip only
    for clip in iter_clips(source, cfg, name=name, timeout_s=timeout_s, limits=limits):
        current: dict[int, np.ndarray] = {}
        for index, data in zip(clip.frame_indices, clip.frames):
            if index not in current:
                current[index] = previous[index] if index in previous else decode_image(data)
        previous = current
        yield clip, np.stack([current[index] for index in clip.frame_indices])


# --------------------------------------------------------------------------- opening


class _Deadline:
    """A wall-clock limit; ``check()`` raises ``VideoError(stage="timeout")`` once it has passed."""

    def __init__(self, timeout_s: float | None, setting: str = "preprocess.video_timeout_s"):
        self.timeout_s = timeout_s
        self.setting = setting
        self.at = None if timeout_s is None else time.monotonic() + timeout_s

    @classmethod
    def of(cls, timeout_s: float | None, limits: DecodeLimits) -> _Deadline:
        """The tighter of ``timeout_s`` (the preprocessing's) and ``limits.timeout_s``."""
        if limits.timeout_s is not None and (timeout_s is None or limits.timeout_s < timeout_s):
            return cls(limits.timeout_s, limits.setting("timeout_s"))
        return cls(timeout_s)

    def check(self) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise VideoError(f"decoding took longer than {self.timeout_s:g} s ({self.setting})", "timeout")


class _DeadlineReader:
    """A read-only view of a file object whose ``read`` checks a deadline before and after."""

    def __init__(self, raw: BinaryIO, deadline: _Deadline):
        self._raw = raw
        self._deadline = deadline

    def read(self, size: int = -1) -> bytes:
        self._deadline.check()
        data = self._raw.read(size)
        self._deadline.check()
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def seekable(self) -> bool:
        seekable = getattr(self._raw, "seekable", None)
        return True if seekable is None else bool(seekable())


@contextlib.contextmanager
def _errors(stage: str) -> Iterator[None]:
    """Turns PyAV/FFmpeg exceptions raised inside the block into ``VideoError(stage)``."""
    try:
        yield
    except av.FFmpegError as exc:
        what = {"open": "not a readable video file", "probe": "cannot read the video stream"}
        detail = exc.strerror or str(exc)
        raise VideoError(f"{what.get(stage, 'decoding failed')}: {detail}", stage) from exc


class _OpenVideo:
    """An open container and its video stream, which can be opened again from the start."""

    def __init__(self, source: Source, target: Any, start: int | None, threads: int):
        self._source = source
        self._target = target
        self._start = start  # where a file object's video begins, to re-read it
        self._threads = threads
        self.container: Any = None
        self.stream: Any = None
        self.duration = 0.0
        self.index: keyframes.PacketIndex | None = None
        self.shorter_than_stated = False
        self.at_end = False
        self.open()

    @property
    def can_reopen(self) -> bool:
        return isinstance(self._target, str) or self._start is not None

    def open(self) -> None:
        self.container = _open_container(self._target)
        self.stream = _video_stream(self.container)
        context = self.stream.codec_context
        context.thread_type = "AUTO"
        if self._threads:
            context.thread_count = self._threads

    def rewind(self) -> None:
        """Makes the next demux start at the beginning (after the index pass read to the end)."""
        if self.at_end:
            self.reopen()

    def reopen(self) -> None:
        self.at_end = False
        self.close()
        if self._start is not None:
            self._source.seek(self._start)  # type: ignore[union-attr]
        self.open()

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None


@contextlib.contextmanager
def _open_video(
    source: Source,
    name: str,
    deadline: _Deadline,
    threads: int,
    limits: DecodeLimits = NO_LIMITS,
    index: bool = False,
) -> Iterator[_OpenVideo]:
    """Opens ``source``; the result's ``duration`` is known and, with ``index``, its packet index.

    The index (a demux-only pass, then the video is opened again) is built when asked for
    and the source can be read twice, or when the metadata states no duration. ``limits``'
    frame size and duration are checked here, before any frame is decoded.
    """
    if isinstance(source, (str, os.PathLike)):
        target: Any = os.fspath(source)
        start = None
    else:
        target = _DeadlineReader(source, deadline)
        start = source.tell() if target.seekable() else None
    opened = _OpenVideo(source, target, start, threads)
    try:
        stream = opened.stream
        limits.check_pixels(stream.codec_context.width, stream.codec_context.height)
        stated = _metadata_duration(opened.container, stream)
        if index or stated is None:
            if not opened.can_reopen:
                if stated is None:
                    raise VideoError(
                        "the video states no duration and the stream cannot be read twice to find it: "
                        "give a seekable file",
                        "probe",
                    )
            else:
                if stated is None:
                    log.debug("%s: no duration in the metadata, scanning packets", name)
                with _errors("probe"):
                    opened.index = _scan_packets(opened.container, stream, deadline, limits)
                opened.at_end = True  # a seek moves on from here; a sequential pass calls rewind()
        opened.duration, opened.shorter_than_stated = _duration(stated, opened.index, stream)
        limits.check_duration(opened.duration)
        yield opened
    finally:
        opened.close()


def _open_container(target: Any) -> Any:
    with _errors("open"):
        return av.open(target, mode="r", metadata_errors="replace")


def _video_stream(container: Any) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        raise VideoError(f"no video stream (streams: {', '.join(kinds) or 'none'})", "probe")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise VideoError(f"no decoder for the video codec (id {stream.codec_id})", "probe")
    return stream


def _metadata_duration(container: Any, stream: Any) -> float | None:
    """The video stream's duration from the metadata, or ``None`` when it is not stated."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska/WebM: per-stream "HH:MM:SS.nnnnnnnnn"
    if tag:
        with contextlib.suppress(ValueError):
            hours, minutes, seconds = tag.split(":")
            duration = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
            if duration > 0:
                return duration
    if container.duration and len(container.streams) == 1:  # another stream may outlast video
        return container.duration / av.time_base
    return None


def _scan_packets(
    container: Any, stream: Any, deadline: _Deadline, limits: DecodeLimits = NO_LIMITS
) -> keyframes.PacketIndex:
    """The stream's :class:`~pipeline.keyframes.PacketIndex` from a demux-only pass (no decoding)."""
    rate = stream.average_rate or stream.guessed_rate
    default_step = int(1 / (rate * stream.time_base)) if rate else 0

    def check(count: int) -> None:
        deadline.check()
        limits.check_frames(count)

    return keyframes.scan(lambda: container.demux(stream), default_step, check)


def _duration(stated: float | None, index: keyframes.PacketIndex | None, stream: Any) -> tuple[float, bool]:
    """The duration to plan on, and whether the metadata states (much) more than the packets hold.

    The metadata's duration, unless the packets end well before it (by more than the
    truncation slack): then what the packets hold. Without metadata, the packets' span.
    """
    found = None
    if index is not None and len(index):
        start = stream.start_time if stream.start_time is not None else index.pts[0]
        found = index.duration_s(start, float(stream.time_base))
    if stated is None:
        if found is None:
            raise VideoError("the video stream has no timestamped packets", "probe")
        return found, False
    rate = stream.average_rate or stream.guessed_rate
    slack = _TRUNCATION_SLACK_S + (2 / float(rate) if rate else 0.0)
    if found is not None and 0 < found < stated - slack:
        return found, True
    return stated, False


def _aspect(stream: Any) -> Fraction:
    sar = stream.codec_context.sample_aspect_ratio
    return Fraction(sar) if sar else Fraction(1)


# --------------------------------------------------------------------------- decoding


class _ClipAssembler:
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
        _SeekMismatch: the demuxer cannot seek this stream.
    """

    def seek(target: int) -> tuple[Any, Iterator[Any]]:
        try:
            container.seek(target, stream=stream, backward=True, any_frame=False)
        except av.FFmpegError as exc:
            raise _SeekMismatch(f"seeking to pts {target} failed: {exc}") from exc
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


class _SeekMismatch(Exception):
    """Seeking did not give the frames the packet index promised (internal: ``iter_clips`` falls back)."""


class _Timing:
    """What both decode loops derive alike from the stream: time tolerance and the step for frames without pts."""

    def __init__(self, stream: Any):
        rate = stream.average_rate or stream.guessed_rate
        self.rate = float(rate) if rate else None
        self.tolerance = min(_TIME_TOLERANCE_S, 0.25 / self.rate) if self.rate else _TIME_TOLERANCE_S
        self.step = max(1, round(1 / (rate * stream.time_base))) if rate else 1


def _encoder(stream: Any, cfg: PreprocessConfig) -> Callable[[av.VideoFrame], bytes]:
    converter = FrameConverter(cfg.height, cfg.width, cfg.resize, _aspect(stream))

    def encode(frame: av.VideoFrame) -> bytes:
        return encode_image(converter.convert(frame), cfg.frame_encoding, cfg.jpeg_quality)

    return encode


def _decode_clips(
    opened: _OpenVideo,
    plans: list[clip_sampling.ClipPlan],
    cfg: PreprocessConfig,
    deadline: _Deadline,
    timing: _Timing,
    stats: DecodeStats,
    limits: DecodeLimits = NO_LIMITS,
    skip: set[int] | frozenset[int] = frozenset(),
) -> Iterator[EncodedClip]:
    """The sequential loop: every frame once, in order; only served frames are converted.

    Clips whose index is in ``skip`` (already yielded by an abandoned seek pass) are not yielded again.
    """
    container, stream = opened.container, opened.stream
    encoder = _encoder(stream, cfg)
    assembler: _ClipAssembler | None = None
    threshold = math.inf
    held: av.VideoFrame | None = None  # the last frame: it serves targets until the next one starts
    held_pts = held_index = 0
    count = 0

    def finished(clips: list[EncodedClip]) -> list[EncodedClip]:
        return [clip for clip in clips if clip.index not in skip]

    with _errors("decode"):
        for packet in container.demux(stream):
            deadline.check()
            for frame in packet.decode():
                deadline.check()
                stats.frames_decoded += 1
                limits.check_frames(count + 1)
                limits.check_pixels(frame.width, frame.height)
                pts = frame.pts
                if pts is None:
                    pts = held_pts + timing.step if held is not None else 0
                if assembler is None:
                    start = stream.start_time if stream.start_time is not None else pts
                    assembler = _ClipAssembler(plans, start, stream.time_base, timing.tolerance)
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
    slack = _TRUNCATION_SLACK_S + (2 / timing.rate if timing.rate else 0.0)
    if assembler.times[-1] > end + slack:
        raise VideoError(
            f"the stream ends at {end:.2f} s but its metadata says {opened.duration:.2f} s: truncated or corrupt file",
            "decode",
        )
    yield from finished(assembler.serve(held, held_index, held_pts, math.inf, encoder))
    stats.frames_kept = assembler.encoded
    log.debug("%d frame(s) decoded, %d encoded", count, assembler.encoded)


def _seek_clips(
    opened: _OpenVideo,
    plans: list[clip_sampling.ClipPlan],
    cfg: PreprocessConfig,
    deadline: _Deadline,
    plan: keyframes.DecodePlan,
    timing: _Timing,
    stats: DecodeStats,
    limits: DecodeLimits = NO_LIMITS,
) -> Iterator[EncodedClip]:
    """The seek loop: per decode range, seek to its keyframe and decode forward to its last frame.

    Ranges come sorted and apart, so each seek goes forward. Every frame at or after the
    range's keyframe must have the next timestamp of the index (frames before it, such as an
    open GOP's leading B-frames that reference the previous GOP, are dropped undecoded by
    us); anything else raises :class:`_SeekMismatch` and ``iter_clips`` decodes sequentially.

    Raises:
        _SeekMismatch: the frames are not those the index predicts.
    """
    container, stream = opened.container, opened.stream
    index = opened.index
    assert index is not None
    pts = index.pts
    start = stream.start_time if stream.start_time is not None else pts[0]
    assembler = _ClipAssembler(plans, start, stream.time_base, timing.tolerance)
    encoder = _encoder(stream, cfg)
    for decode_range in plan.ranges:
        deadline.check()
        packets = _land(container, stream, index, decode_range.key_pts)
        stats.seeks += 1
        expected = decode_range.first
        wanted = iter(decode_range.frames)
        want: int | None = next(wanted)
        with _errors("decode"):
            for packet in packets:
                deadline.check()
                for frame in packet.decode():
                    deadline.check()
                    stats.frames_decoded += 1
                    limits.check_frames(stats.frames_decoded)
                    limits.check_pixels(frame.width, frame.height)
                    if frame.pts is None:
                        raise _SeekMismatch("a frame without a timestamp")
                    if frame.pts < decode_range.key_pts:
                        continue  # before the keyframe: a leading frame that needs the previous GOP
                    if frame.pts != pts[expected]:
                        raise _SeekMismatch(f"frame at pts {frame.pts} where the index has {pts[expected]}")
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
            raise _SeekMismatch(f"the stream ended before frame {want}")
    if not assembler.finished:
        raise _SeekMismatch("targets left unserved")
    log.debug("%d frame(s) decoded in %d range(s), %d encoded", stats.frames_decoded, len(plan.ranges), assembler.encoded)
