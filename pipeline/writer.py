"""Writing real video files with PyAV: used by the demo dataset and by test fixtures.

Containers and codecs are FFmpeg's own (mp4/H.264, avi/MJPEG, webm/VP9, ...), so what the
demo and the tests feed the pipeline is what users' cameras and datasets produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import BinaryIO

import av
import numpy as np

# extension -> (container format, codec, pixel format, extra codec options)
FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "mp4": ("mp4", "libx264", "yuv420p", {"preset": "ultrafast", "crf": "23"}),
    "avi": ("avi", "mjpeg", "yuvj420p", {}),
    "webm": ("webm", "libvpx-vp9", "yuv420p", {"deadline": "realtime", "cpu-used": "8", "b": "0", "crf": "36"}),
    "mkv": ("matroska", "libx264", "yuv420p", {"preset": "ultrafast", "crf": "23"}),
    "mov": ("mov", "mpeg4", "yuv420p", {}),
}


def write_video(
    target: str | BinaryIO,
    frames: Iterable[np.ndarray],
    fps: float,
    ext: str = "mp4",
    rotation: int | None = None,
    *,
    codec: str | None = None,
    codec_options: Mapping[str, str] | None = None,
    container_options: Mapping[str, str] | None = None,
    timestamps: Sequence[float] | None = None,
) -> int:
    """Encodes RGB frames (H, W, 3, uint8) into a video file.

    Args:
        target: a local path or a writable binary file object.
        frames: RGB frames, all of one size; H.264 and VP9 need even sizes, so odd
            sizes are padded by one row/column of edge pixels.
        fps: frame rate (may be fractional, e.g. 29.97).
        ext: one of :data:`FORMATS` (mp4, avi, webm, mkv, mov).
        rotation: clockwise degrees (a multiple of 90) that a player turns the stored
            frames by to show them upright, stored as the stream's display matrix: what a
            phone writes for a portrait video kept in landscape (``rotate=90``). Reading
            back, ``VideoFrame.rotation`` is its negative (counter-clockwise). Not for avi,
            which has no place for it.
        codec: an FFmpeg encoder instead of the extension's (e.g. ``libsvtav1`` in mkv).
        codec_options: encoder options added to (or replacing) the extension's, e.g.
            ``{"g": "8", "bf": "2"}`` for a keyframe every 8 frames with B-frames.
        container_options: muxer options, e.g. ``{"movflags": "frag_keyframe"}`` (fragmented MP4).
        timestamps: presentation time in seconds of each frame (a variable frame rate, a
            negative start); by default frame ``i`` is at ``i / fps``.

    Returns:
        The number of frames written.

    Raises:
        ValueError: for an unknown ``ext``, frames of the wrong shape or a rotation that
            the container cannot store.
    """
    if ext not in FORMATS:
        raise ValueError(f"unknown video extension {ext!r}: use one of {sorted(FORMATS)}")
    if rotation and (ext == "avi" or rotation % 90):
        raise ValueError(f"rotation {rotation} cannot be stored in {ext}: use a multiple of 90 and mp4/mov/mkv/webm")
    container_format, default_codec, pix_fmt, options = FORMATS[ext]
    if codec is not None and codec != default_codec:
        options = {}
    rate = Fraction(fps).limit_denominator(1001)
    # timestamps: in a fine time base (1/90000 s, as MPEG does) so irregular times keep their value
    time_base = Fraction(1, 90000) if timestamps is not None else 1 / rate
    count = 0
    # bitexact: no random container ids, so the same frames give the same bytes (stable DVC hashes)
    muxer = {"fflags": "+bitexact", **dict(container_options or {})}
    with av.open(target, mode="w", format=container_format, options=muxer) as container:
        stream = container.add_stream(codec or default_codec, rate=rate, options={**options, **dict(codec_options or {})})
        stream.pix_fmt = pix_fmt
        if timestamps is not None:
            stream.codec_context.time_base = time_base
        if rotation:
            # The display matrix is coded side data; PyAV 18 writes it (a "rotate" metadata
            # tag is ignored by FFmpeg 7's muxers). PyAV's angle is counter-clockwise.
            stream.set_display_rotation(-rotation)
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be (H, W, 3) RGB arrays, got shape {frame.shape}")
            frame = _even(np.ascontiguousarray(frame, dtype=np.uint8))
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = count if timestamps is None else round(timestamps[count] / time_base)
            video_frame.time_base = time_base
            container.mux(stream.encode(video_frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame
