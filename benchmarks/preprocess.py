"""Benchmark: the preprocessing job's frames/s against decode-only PyAV on the same files, plus peak memory.

Usage::

    .venv/bin/python benchmarks/preprocess.py [--videos 16] [--seconds 8] [--params params.yaml] [--workers 0]

It writes N and 2N H.264 videos (320x240, 30 fps), then measures in one run:

* decode-only: every frame of the 2N videos decoded with PyAV (threaded codec), nothing else;
* the job (``python -m pipeline``) on N and on 2N videos; its marginal cost ``t(2N) - t(N)``
  gives the throughput without start-up, which is reported separately;
* peak memory (max RSS) of the job on one 3-minute 640x360 video against a 10-second one.

It prints the ratio job/decode-only (target >= 0.85) and the memory difference (target <= 300 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.writer import write_video  # noqa: E402

MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).returncode
wall = time.perf_counter() - start
print(json.dumps({"code": code, "wall_s": wall, "max_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

DECODE_ONLY = r"""
import sys, av
frames = 0
for path in sys.argv[1:]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            frames += 1
print(frames)
"""


def measure(args: list[str], repeat: int = 1) -> dict:
    """Runs ``args`` in a fresh process ``repeat`` times; returns the fastest wall time and the peak RSS."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["code"] != 0:
            raise RuntimeError(f"{' '.join(args[:6])} ... failed with exit code {result['code']}")
        runs.append(result)
    return {"wall_s": min(r["wall_s"] for r in runs), "max_rss_mb": max(r["max_rss_mb"] for r in runs)}


def moving_frames(n: int, width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    for i in range(n):
        frame = np.roll(background, shift=2 * i, axis=1)
        y = (height // 3 + i) % (height - 40)
        frame[y : y + 40, (3 * i) % (width - 40) : (3 * i) % (width - 40) + 40] = (250, 30, 30)
        yield frame


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int, fps: float = 30.0) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / ("a" if i % 2 else "b") / f"v{i:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(str(path), moving_frames(int(seconds * fps), width, height, i), fps, "mp4")
        paths.append(path)
    return paths


def job_args(input_dir: Path, output: Path, params: str, workers: int) -> list[str]:
    args = [sys.executable, "-m", "pipeline", "--input", str(input_dir), "--output", str(output), "--params", params]
    if workers:
        args += ["--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=48, help="N (the job also runs on 2N)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement; the fastest counts")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--workers", type=int, default=0, help="Beam DirectRunner worker processes (0: in-process)")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"

    work = Path(tempfile.mkdtemp(prefix="vidseq-bench-"))
    try:
        n = args.videos
        print(f"writing {2 * n} videos of {args.seconds:g} s, 320x240, 30 fps, H.264 ...", flush=True)
        half, full = work / "half", work / "full"
        videos = make_videos(full, 2 * n, args.seconds, 320, 240)
        for path in videos[:n]:
            target = half / path.relative_to(full)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)

        decode_only = [sys.executable, "-c", DECODE_ONLY, *map(str, videos)]
        subprocess.run(decode_only, capture_output=True, check=True)  # warm-up: page cache, imports
        decode_s = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            frames = int(subprocess.run(decode_only, capture_output=True, text=True, check=True).stdout)
            decode_s = min(decode_s, time.perf_counter() - start)
        frames_half = frames // 2
        decode_fps = frames / decode_s

        t_half = measure(job_args(half, work / "out_half", args.params, args.workers), args.repeat)
        t_full = measure(job_args(full, work / "out_full", args.params, args.workers), args.repeat)
        marginal = t_full["wall_s"] - t_half["wall_s"]
        job_fps = (frames - frames_half) / marginal
        startup = max(0.0, t_half["wall_s"] - marginal)
        spec = json.loads((work / "out_full" / "dataset.json").read_text())
        clips = sum(s["clips"] for s in spec["splits"].values())

        print(f"decode-only PyAV : {frames} frames in {decode_s:.2f} s = {decode_fps:.0f} frames/s")
        print(f"job, {n} videos   : {t_half['wall_s']:.2f} s;  {2 * n} videos: {t_full['wall_s']:.2f} s ({clips} clips)")
        print(f"job marginal     : {frames - frames_half} frames in {marginal:.2f} s = {job_fps:.0f} frames/s")
        print(f"job start-up     : {startup:.2f} s")
        print(f"ratio job/decode-only: {job_fps / decode_fps:.2f}  (target >= 0.85)")
        print(f"peak memory of the job on {2 * n} videos: {t_full['max_rss_mb']:.0f} MB")

        if not args.skip_memory:
            print("writing a 3-minute and a 10-second 640x360 video ...", flush=True)
            long_dir, short_dir = work / "long", work / "short"
            make_videos(long_dir, 1, 180, 640, 360)
            make_videos(short_dir, 1, 10, 640, 360)
            m_long = measure(job_args(long_dir, work / "out_long", args.params, 0))
            m_short = measure(job_args(short_dir, work / "out_short", args.params, 0))
            diff = m_long["max_rss_mb"] - m_short["max_rss_mb"]
            print(
                f"peak memory: 3-minute video {m_long['max_rss_mb']:.0f} MB, 10-second video "
                f"{m_short['max_rss_mb']:.0f} MB, difference {diff:+.0f} MB (target <= 300 MB)"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
