"""Tiny synthetic videos and bad input files for tests (real files written with PyAV)."""

from __future__ import annotations

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
