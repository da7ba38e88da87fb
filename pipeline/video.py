"""PyAV video decoding: probe a video and stream its fixed-length clips as encoded frames.

:func:`iter_clips` is what the Beam job and ``training.predict`` call. This module opens the
video and plans; the decode loops are in :mod:`pipeline.decoding`, the error, clip, limits and
stats types in :mod:`pipeline.video_types` (re-exported here):

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
import logging
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, Union

import av
import numpy as np

from pipeline import clips as clip_sampling
from pipeline import decoding, keyframes
from pipeline.frames import decode_image, display_size
from pipeline.video_types import (
    NO_LIMITS,
    STAGES,
    TRUNCATION_SLACK_S,
    Deadline,
    DecodeLimits,
    DecodeStats,
    EncodedClip,
    VideoError,
    ffmpeg_errors,
)
from vidseq.params import PreprocessConfig

__all__ = [
    "NO_LIMITS", "STAGES", "DecodeLimits", "DecodeStats", "EncodedClip", "VideoError", "VideoInfo", "decode_image",
    "iter_clip_arrays", "iter_clips", "probe",
]  # fmt: skip

log = logging.getLogger(__name__)

Source = Union[str, "os.PathLike[str]", BinaryIO]


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


# --------------------------------------------------------------------------- public API


def probe(source: Source, name: str = "") -> VideoInfo:
    """Reads a video's duration, rate, size, rotation, frame count and codec.

    Decodes at most the first frame (for the rotation); a demux-only pass finds the duration
    of files whose metadata lacks it.

    Raises:
        VideoError: if the file is not a readable video.
    """
    with _open_video(source, name, Deadline(None), threads=0) as opened:
        opened.rewind()
        container, stream, duration = opened.container, opened.stream, opened.duration
        with ffmpeg_errors("decode"):
            first = next(container.decode(stream), None)
        if first is None:
            raise VideoError("the video stream holds no decodable frame", "decode")
        rotation = first.rotation
        width, height = display_size(first.width, first.height, rotation, decoding.aspect(stream))
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
    deadline = Deadline.of(timeout_s, limits)
    with _open_video(source, name, deadline, cfg.decode_threads, limits, index=True) as opened:
        stats.shorter_than_stated = opened.shorter_than_stated
        try:
            plans = clip_sampling.plan_from_config(opened.duration, cfg)
        except clip_sampling.SamplingError as exc:
            raise VideoError(str(exc), "sample") from exc
        timing = decoding.Timing(opened.stream)
        index = opened.index
        plan = keyframes.choose("sequential", None, ())
        if index is not None and index.seekable and len(index):
            start = opened.stream.start_time if opened.stream.start_time is not None else index.pts[0]
            thresholds = decoding.ClipAssembler(plans, start, opened.stream.time_base, timing.tolerance).target_thresholds
            plan = keyframes.choose(cfg.decode, index, keyframes.serving_frames(index.pts, thresholds))
        log.debug(
            "%s: %.2f s, %d clip(s) planned, %s (sequential %d frames, seek %d)",
            name, opened.duration, len(plans), plan.mode, plan.sequential_frames, plan.seek_frames,
        )  # fmt: skip
        stats.mode = plan.mode
        done: set[int] = set()
        if plan.mode == "seek":
            try:
                for clip in decoding.seek(opened, plans, cfg, deadline, plan, timing, stats, limits):
                    done.add(clip.index)
                    yield clip
                return
            except decoding.SeekMismatch as exc:
                log.info("%s: seeking did not find the frames the index promised (%s); decoding sequentially", name, exc)
                stats.mode, stats.fell_back = "sequential", True
                opened.reopen()
        first_pts = opened.back_to_start()
        try:
            yield from decoding.sequential(opened, plans, cfg, deadline, timing, stats, limits, skip=done, first_pts=first_pts)
        except decoding.SeekMismatch as exc:  # raised at the first frame, before any clip
            log.debug("%s: %s; opening it again", name, exc)
            opened.reopen()
            yield from decoding.sequential(opened, plans, cfg, deadline, timing, stats, limits, skip=done)


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


class DeadlineReader:
    """A read-only view of a file object whose ``read`` checks a deadline before and after."""

    def __init__(self, raw: BinaryIO, deadline: Deadline):
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
        try:
            self.stream = _video_stream(self.container)
        except BaseException:
            self.close()
            raise
        context = self.stream.codec_context
        context.thread_type = "AUTO"
        if self._threads:
            context.thread_count = self._threads

    def rewind(self) -> None:
        """Makes the next demux start at the beginning (after the index pass read to the end)."""
        if self.at_end:
            self.reopen()

    def back_to_start(self) -> int | None:
        """Like :meth:`rewind`, by a seek to the first keyframe where the index has one (cheaper
        than opening again: a file object's reads, the header's parsing).

        Returns:
            The pts the first frame must have (the caller checks it and opens again if not),
            or None when the container was opened again or never left the start.
        """
        index = self.index
        if not self.at_end or index is None or not index.seekable or not len(index) or not len(index.keyframes):
            self.rewind()
            return None
        try:
            self.container.seek(index.keyframes[0], stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError:
            self.reopen()
            return None
        self.at_end = False
        return index.pts[0]

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
    deadline: Deadline,
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
        target = DeadlineReader(source, deadline)
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
                with ffmpeg_errors("probe"):
                    opened.index = _scan_packets(opened.container, stream, deadline, limits)
                opened.at_end = True  # a seek moves on from here; a sequential pass calls rewind()
        opened.duration, opened.shorter_than_stated = _duration(stated, opened.index, stream)
        limits.check_duration(opened.duration)
        yield opened
    finally:
        opened.close()


def _open_container(target: Any) -> Any:
    with ffmpeg_errors("open"):
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
    container: Any, stream: Any, deadline: Deadline, limits: DecodeLimits = NO_LIMITS
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
    slack = TRUNCATION_SLACK_S + (2 / float(rate) if rate else 0.0)
    if found is not None and 0 < found < stated - slack:
        return found, True
    return stated, False




