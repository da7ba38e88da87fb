"""Tiny synthetic videos and bad input files for tests (real files written with PyAV)."""

from __future__ import annotations

import struct
from pathlib import Path

import av
import numpy as np

from pipeline.writer import write_video


def moving_square_frames(n: int, size: tuple[int, int] = (32, 32), dx: int = 1, dy: int = 0, seed: int = 0):
    """``n`` RGB frames of a bright square moving by (dx, dy) pixels per frame on a dark noisy background."""
    h, w = size
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
    side = max(2, min(h, w) // 4)
    for i in range(n):
        frame = background.copy()
        y = (h // 2 - side // 2 + dy * i) % (h - side)
        x = (w // 2 - side // 2 + dx * i) % (w - side)
        frame[y : y + side, x : x + side] = (230, 200, 40)
        yield frame


def write_tiny_video(path: Path, seconds: float = 1.0, fps: float = 12.0, size=(32, 32), dx=1, dy=0, seed=0) -> Path:
    """Writes a short moving-square video; the container/codec follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, round(seconds * fps))
    write_video(str(path), moving_square_frames(n, size, dx, dy, seed), fps, ext=path.suffix.lstrip("."))
    return path


def write_audio_only(path: Path, seconds: float = 0.5) -> Path:
    """An audio-only file (PCM in Matroska) with a video-like extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = 8000
    with av.open(str(path), mode="w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        samples = (np.sin(np.arange(int(rate * seconds)) / 5) * 1000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def write_bad_files(folder: Path, good_mp4: Path) -> dict[str, str]:
    """Writes one of each kind of bad input into ``folder``; returns ``{file name: what it is}``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero_bytes.mp4").write_bytes(b"")
    data = good_mp4.read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (folder / "random_bytes.mp4").write_bytes(np.random.default_rng(1).bytes(4096))
    (folder / "text_file.avi").write_text("this is not a video\n" * 20)
    write_audio_only(folder / "audio_only.mkv")
    return {
        "zero_bytes.mp4": "zero-byte file",
        "truncated.mp4": "truncated mp4",
        "random_bytes.mp4": "random bytes",
        "text_file.avi": "text file",
        "audio_only.mkv": "no video stream",
    }


# --------------------------------------------------------------------------- videos that seeking must get right

H264_SMALL_GOP = {"preset": "veryfast", "g": "6", "bf": "2", "x264-params": "scenecut=0"}


def _child_boxes(data: bytes | bytearray, start: int, end: int) -> list[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of the boxes inside ``data[start:end]`` (a container box's body)."""
    offset, boxes = start, []
    while offset + 8 <= end:
        size = int.from_bytes(data[offset : offset + 4], "big")
        if size < 8:
            break
        boxes.append((bytes(data[offset + 4 : offset + 8]), offset, size))
        offset += size
    return boxes


def _top_level_boxes(data: bytes) -> list[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of an MP4 file's top-level boxes."""
    return _child_boxes(data, 0, len(data))


def _declare_duration(data: bytes, seconds: float) -> bytes:
    """A fragmented MP4 whose init segment declares ``seconds``: ``mvhd``, ``tkhd``, ``mdhd`` and a new ``mehd``.

    FFmpeg writes an empty ``moov`` (duration 0) for ``empty_moov``; a live recorder or packager
    that states the planned length writes these. Fragments use ``default_base_moof`` offsets, so
    growing ``moov`` by the ``mehd`` box moves no sample.
    """
    out = bytearray(data)
    ((_, moov, moov_size),) = [box for box in _top_level_boxes(data) if box[0] == b"moov"]
    movie_scale = 0

    def patch(start: int, end: int) -> None:
        nonlocal movie_scale
        for kind, offset, size in _child_boxes(out, start, end):
            body = offset + 8  # version 0 boxes: 4 bytes version/flags, then 32-bit fields
            if kind == b"mvhd":
                movie_scale = int.from_bytes(out[body + 12 : body + 16], "big")
                out[body + 16 : body + 20] = round(seconds * movie_scale).to_bytes(4, "big")
            elif kind == b"tkhd":
                out[body + 20 : body + 24] = round(seconds * movie_scale).to_bytes(4, "big")
            elif kind == b"mdhd":
                scale = int.from_bytes(out[body + 12 : body + 16], "big")
                out[body + 16 : body + 20] = round(seconds * scale).to_bytes(4, "big")
            elif kind in (b"trak", b"mdia"):
                patch(body, offset + size)

    patch(moov + 8, moov + moov_size)
    ((_, mvex, mvex_size),) = [box for box in _child_boxes(out, moov + 8, moov + moov_size) if box[0] == b"mvex"]
    mehd = struct.pack(">I4sB3xI", 16, b"mehd", 0, round(seconds * movie_scale))
    out[mvex : mvex + 4] = (mvex_size + len(mehd)).to_bytes(4, "big")
    out[moov : moov + 4] = (moov_size + len(mehd)).to_bytes(4, "big")
    out[mvex + 8 : mvex + 8] = mehd
    return bytes(out)


def _cut_fragmented_mp4(data: bytes, keep_fragments: int) -> bytes:
    """The init segment (``ftyp`` + empty ``moov``) and the first fragments only: a recording cut short."""
    moofs = [offset for kind, offset, _ in _top_level_boxes(data) if kind == b"moof"]
    return data[: moofs[keep_fragments]]


def write_seek_cases(folder: Path) -> dict[str, Path]:
    """Tiny videos with what makes seeking hard; ``{case: path}``. A few seconds each, small GOPs."""
    folder.mkdir(parents=True, exist_ok=True)

    def frames(n, size=(32, 48), seed=0):
        return list(moving_square_frames(n, size, dx=1, dy=1, seed=seed))

    cases = {
        "bframes.mp4": dict(fps=24, n=72, codec_options=H264_SMALL_GOP),
        "open_gop.mkv": dict(fps=24, n=72, codec_options={
            "preset": "veryfast", "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=3:open-gop=1"}),
        "long_gop.mp4": dict(fps=24, n=120, codec_options={"preset": "veryfast", "g": "100", "bf": "2",
                                                           "x264-params": "scenecut=0"}),
        "vfr.mp4": dict(fps=24, n=60, codec_options=H264_SMALL_GOP,
                        timestamps=[0.04 * i + 0.013 * (i % 3 == 0) + 0.4 * (i >= 30) for i in range(60)]),
        "negative_start.mp4": dict(fps=24, n=60, codec_options=H264_SMALL_GOP,
                                   timestamps=[(i - 5) / 24 for i in range(60)]),
        "rotated.mp4": dict(fps=24, n=48, codec_options=H264_SMALL_GOP, rotation=90),
        "ntsc.mp4": dict(fps=30000 / 1001, n=90, codec_options=H264_SMALL_GOP),
        "mjpeg.avi": dict(fps=25, n=50),
        "vp9.webm": dict(fps=24, n=60, codec_options={"g": "8"}),
        "av1.mkv": dict(fps=24, n=48, size=(64, 64), codec="libsvtav1", codec_options={"g": "8", "preset": "12"}),
        "fragmented.mp4": dict(fps=24, n=96, codec_options=H264_SMALL_GOP,
                               container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
        "fragmented_declared.mp4": dict(fps=24, n=96, codec_options=H264_SMALL_GOP,
                                        container_options={"movflags": "frag_keyframe+empty_moov+default_base_moof"}),
        "cut.webm": dict(fps=24, n=96, codec_options={"g": "8"}),
    }
    paths = {}
    for name, spec in cases.items():
        spec = dict(spec)
        fps, n, size = spec.pop("fps"), spec.pop("n"), spec.pop("size", (32, 48))
        if spec.get("codec") and spec["codec"] not in av.codecs_available:
            continue  # this FFmpeg build cannot encode it
        path = folder / name
        stem, ext = name.rsplit(".", 1)
        write_video(str(path), frames(n, size, seed=len(paths)), fps, ext, **spec)
        if name == "fragmented.mp4":  # 16 fragments of 6 frames written, 8 kept
            path.write_bytes(_cut_fragmented_mp4(path.read_bytes(), keep_fragments=8))
        if name == "fragmented_declared.mp4":  # the init segment states 4 s; 8 of 16 fragments (2 s) follow
            path.write_bytes(_cut_fragmented_mp4(_declare_duration(path.read_bytes(), n / fps), keep_fragments=8))
        if name == "cut.webm":  # the header states 4 s, the file holds about half
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        paths[stem] = path
    return paths
