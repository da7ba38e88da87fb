"""Writing real video files with PyAV: used by the demo dataset and by test fixtures.

Containers and codecs are FFmpeg's own (mp4/H.264, avi/MJPEG, webm/VP9, ...), so what the
demo and the tests feed the pipeline is what users' cameras and datasets produce.
"""

from __future__ import annotations

from collections.abc import Iterable
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
) -> int:
    """Encodes RGB frames (H, W, 3, uint8) into a video file.

    Args:
        target: a local path or a writable binary file object.
        frames: RGB frames, all of one size; H.264 and VP9 need even sizes, so odd
            sizes are padded by one row/column of edge pixels.
        fps: frame rate (may be fractional, e.g. 29.97).
        ext: one of :data:`FORMATS` (mp4, avi, webm, mkv, mov).
        rotation: display rotation in degrees to store as metadata (mp4/mov only).

    Returns:
        The number of frames written.

    Raises:
        ValueError: for an unknown ``ext`` or frames of the wrong shape.
    """
    if ext not in FORMATS:
        raise ValueError(f"unknown video extension {ext!r}: use one of {sorted(FORMATS)}")
    container_format, codec, pix_fmt, options = FORMATS[ext]
    rate = Fraction(fps).limit_denominator(1001)
    count = 0
    with av.open(target, mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, options=dict(options))
        stream.pix_fmt = pix_fmt
        if rotation:
            stream.metadata["rotate"] = str(rotation)
        for frame in frames:
            if frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f"frames must be (H, W, 3) RGB arrays, got shape {frame.shape}")
            frame = _even(np.ascontiguousarray(frame, dtype=np.uint8))
            if count == 0:
                stream.height, stream.width = frame.shape[:2]
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = count
            video_frame.time_base = 1 / rate
            container.mux(stream.encode(video_frame))
            count += 1
        container.mux(stream.encode(None))
    return count


def _even(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame
