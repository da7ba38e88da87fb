"""Benchmark: the preprocessing job against a PyAV decode-only process pool on the same files, plus peak memory.

Usage::

    .venv/bin/python benchmarks/preprocess.py [--videos 48] [--long-minutes 5] [--skip-long] [--skip-memory]

Everything is measured in one run, on the same files, with the default ``params.yaml`` and the
job's defaults (no runner flags: one worker process per core, ``decode: auto``). N = usable cores.

* **Short videos** (8 s, 320x240, 30 fps, H.264): an N-process pool decoding every frame with
  PyAV (threaded codec), nothing else, against the job. Both run on V and on 2V videos; the
  marginal cost ``t(2V) - t(V)`` gives each one's frames/s without start-up, which is reported
  separately. Target: job / pool >= 0.85.
* **Long videos** (four of 5 minutes, 640x360, 30 fps, H.264 with B-frames, a keyframe every
  8 s): the pool decoding every frame against the job with its default sampling, both on 2 and
  on 4 videos (marginal again). Target: the job >= 10x faster. The records of ``decode: auto``
  must be byte-identical to those of ``decode: sequential`` (checked here, on these files).
* **Peak memory** (max RSS of the largest process: the driver or one worker) of the job on
  60-second 3840x2160 H.264 videos (one per worker), in ``auto`` and in ``sequential`` mode.
  Target: <= 1 GB.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.parallelism import this_machine  # noqa: E402
from pipeline.writer import write_video  # noqa: E402

MEASURE = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"code": done.returncode, "wall_s": wall, "stdout": done.stdout, "stderr": done.stderr[-2000:],
                  "cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}))
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
    """Runs ``args`` in a fresh process ``repeat`` times; the fastest wall time, the peak RSS, the last stdout."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", MEASURE, *args], capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        if result["code"] != 0:
            raise RuntimeError(f"{' '.join(args[:6])} ... failed with exit code {result['code']}: {result['stderr']}")
        runs.append(result)
    return {"wall_s": min(r["wall_s"] for r in runs), "cpu_s": min(r["cpu_s"] for r in runs),
            "max_rss_mb": max(r["max_rss_mb"] for r in runs), "stdout": runs[-1]["stdout"].strip()}  # fmt: skip


def interleaved(first: Callable[[], dict], second: Callable[[], dict], repeat: int) -> tuple[dict, dict]:
    """Runs ``first`` and ``second`` alternately ``repeat`` times; the fastest run of each (wall and CPU apart).

    Alternating keeps a change in the machine's load from favouring one side of a marginal.
    """
    runs: tuple[list[dict], list[dict]] = ([], [])
    for _ in range(repeat):
        runs[0].append(first())
        runs[1].append(second())
    return tuple(  # type: ignore[return-value]
        {**side[-1], "wall_s": min(r["wall_s"] for r in side), "cpu_s": min(r["cpu_s"] for r in side),
         "max_rss_mb": max(r["max_rss_mb"] for r in side)}
        for side in runs
    )  # fmt: skip


def pool_run(paths: list[Path], workers: int) -> dict:
    frames, wall, cpu = decode_pool(paths, workers, 1)
    return {"frames": frames, "wall_s": wall, "cpu_s": cpu, "max_rss_mb": 0.0}


def decode_pool(paths: list[Path], workers: int, repeat: int) -> tuple[int, float, float]:
    """Decodes every frame of ``paths`` with ``workers`` processes; (frames, fastest wall time, least CPU time)."""
    best, best_cpu, frames = float("inf"), float("inf"), 0
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        shares = [paths[i::workers] for i in range(workers)]
        procs = [subprocess.Popen([sys.executable, "-c", DECODE_ONLY, *map(str, share)], stdout=subprocess.PIPE, text=True)
                 for share in shares if share]  # fmt: skip
        frames = sum(int(p.communicate()[0]) for p in procs)
        best = min(best, time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        best_cpu = min(best_cpu, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return frames, best, best_cpu


def moving_frames(n: int, width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    side = max(8, height // 6)
    for i in range(n):
        frame = np.roll(background, shift=2 * i, axis=1)
        y = (height // 3 + i) % (height - side)
        x = (3 * i) % (width - side)
        frame[y : y + side, x : x + side] = (250, 30, 30)
        yield frame


def make_videos(folder: Path, count: int, seconds: float, width: int, height: int, fps: float = 30.0,
                codec_options: dict | None = None, distinct: int | None = None) -> list[Path]:  # fmt: skip
    """``count`` videos in two class folders; only ``distinct`` of them are encoded, the rest are copies."""
    paths = []
    for i in range(count):
        path = folder / ("a" if i % 2 else "b") / f"v{i:03d}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        if distinct is not None and i >= distinct:
            shutil.copy(paths[i % distinct], path)
        else:
            frames = moving_frames(int(seconds * fps), width, height, i)
            write_video(str(path), frames, fps, "mp4", codec_options=codec_options)
        paths.append(path)
    return paths


def subset(paths: list[Path], root: Path, target: Path) -> Path:
    for path in paths:
        copy = target / path.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, copy)
    return target


def job_args(input_dir: Path, output: Path, params: str) -> list[str]:
    """The job decoding every video: ``--no-cache``, so a repeated run measures decoding, not the reuse cache."""
    return [sys.executable, "-m", "pipeline", "--input", str(input_dir), "--output", str(output), "--params", params,
            "--no-cache"]  # fmt: skip


def params_with(params: str, folder: Path, **preprocess) -> str:
    data = yaml.safe_load(Path(params).read_text())
    data["preprocess"].update(preprocess)
    path = folder / f"params-{len(list(folder.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def two_split_params(folders: list[Path]) -> dict:
    """``splits`` and a ``split_salt`` that put videos of every folder into both train and val.

    So the records hold clips in both splits, as training needs; two videos need the right draw.
    """
    from pipeline.sources import list_videos

    splits = {"train": 0.5, "val": 0.5, "test": 0.0}
    for i in range(1000):
        salt = f"bench{i}"
        if all({"train", "val"} <= {item.split for item in list_videos(str(f), splits, salt).items} for f in folders):
            return {"splits": splits, "split_salt": salt}
    raise RuntimeError("no split_salt puts the videos into train and val")


def record_bytes(folder: Path) -> list[bytes]:
    out = []  # TFRecord framing read by hand: the records' exact bytes
    for shard in sorted(glob.glob(str(folder / "*.tfrecord"))):
        data = Path(shard).read_bytes()
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 8], "little")
            out.append(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
    return sorted(out)


def short_videos(work: Path, args, cores: int) -> None:
    v = args.videos
    print(f"writing {2 * v} videos of 8 s, 320x240, 30 fps, H.264 ...", flush=True)
    full = work / "short_full"
    videos = make_videos(full, 2 * v, 8.0, 320, 240)
    half = subset(videos[:v], full, work / "short_half")
    decode_pool(videos, cores, 1)  # warm-up: page cache, imports
    p_half, p_full = interleaved(lambda: pool_run(videos[:v], cores), lambda: pool_run(videos, cores), args.repeat)
    frames, pool_full, pool_full_cpu = p_full["frames"], p_full["wall_s"], p_full["cpu_s"]
    frames_half, pool_half, pool_half_cpu = p_half["frames"], p_half["wall_s"], p_half["cpu_s"]
    pool_fps = (frames - frames_half) / (pool_full - pool_half)
    t_half, t_full = interleaved(
        lambda: measure(job_args(half, work / "out_short_half", args.params)),
        lambda: measure(job_args(full, work / "out_short_full", args.params)),
        args.repeat,
    )
    marginal = t_full["wall_s"] - t_half["wall_s"]
    job_fps = (frames - frames_half) / marginal
    cpu_ratio = (pool_full_cpu - pool_half_cpu) / (t_full["cpu_s"] - t_half["cpu_s"])
    print(f"  pool of {cores} decode-only processes: {v} videos {pool_half:.2f} s, {2 * v} videos {pool_full:.2f} s;"
          f" marginal {pool_fps:.0f} frames/s, {pool_full_cpu - pool_half_cpu:.2f} CPU-s")  # fmt: skip
    print(f"  job (defaults)                  : {v} videos {t_half['wall_s']:.2f} s, {2 * v} videos "
          f"{t_full['wall_s']:.2f} s; marginal {job_fps:.0f} frames/s, {t_full['cpu_s'] - t_half['cpu_s']:.2f} CPU-s; "
          f"start-up {max(0.0, t_half['wall_s'] - marginal):.2f} s")
    print(f"  {t_full['stdout'].splitlines()[-1]}")
    print(f"SHORT: job / {cores}-process decode-only pool = {job_fps / pool_fps:.2f}  (target >= 0.85); "
          f"in CPU time (the same ratio on an idle machine, load-independent) {cpu_ratio:.2f}", flush=True)


def long_videos(work: Path, args, cores: int) -> None:
    minutes = args.long_minutes
    fps = 30.0
    options = {"preset": "veryfast", "g": str(int(8 * fps)), "keyint_min": str(int(8 * fps)), "bf": "3",
               "x264-params": "scenecut=0"}  # fmt: skip
    print(f"writing four {minutes:g}-minute 640x360 H.264 videos (B-frames, a keyframe every 8 s; two encoded, "
          "two copies) ...", flush=True)  # fmt: skip
    full = work / "long_full"
    videos = make_videos(full, 4, minutes * 60, 640, 360, fps, codec_options=options, distinct=2)
    half = subset(videos[:2], full, work / "long_half")
    # the default sampling; splits drawn so that two videos fill train and val (the job needs both)
    params = params_with(args.params, work, **two_split_params([half, full]))
    p_half, p_full = interleaved(lambda: pool_run(videos[:2], cores), lambda: pool_run(videos, cores), args.long_repeat)
    frames, pool_full, pool_full_cpu = p_full["frames"], p_full["wall_s"], p_full["cpu_s"]
    pool_half, pool_half_cpu = p_half["wall_s"], p_half["cpu_s"]
    t_half, t_full = interleaved(
        lambda: measure(job_args(half, work / "out_long_half", params)),
        lambda: measure(job_args(full, work / "out_long_full", params)),
        args.long_repeat,
    )
    pool_marginal = pool_full - pool_half
    job_marginal = t_full["wall_s"] - t_half["wall_s"]
    print(f"  pool of {cores} decode-all processes: 2 videos {pool_half:.2f} s, 4 videos {pool_full:.2f} s "
          f"({frames} frames); marginal {pool_marginal:.2f} s")
    print(f"  job (defaults)                : 2 videos {t_half['wall_s']:.2f} s, 4 videos {t_full['wall_s']:.2f} s; "
          f"marginal {job_marginal:.2f} s")
    print(f"  {t_full['stdout'].splitlines()[-1]}")
    cpu_ratio = (pool_full_cpu - pool_half_cpu) / (t_full["cpu_s"] - t_half["cpu_s"])
    print(f"LONG: job is {pool_marginal / job_marginal:.1f}x faster than decode-all on the pool  (target >= 10x); "
          f"in CPU time {cpu_ratio:.1f}x")
    sequential = params_with(params, work, decode="sequential")
    t_seq = measure(job_args(full, work / "out_long_sequential", sequential))
    same = record_bytes(work / "out_long_full") == record_bytes(work / "out_long_sequential")
    print(f"  decode: sequential job on the 4 videos: {t_seq['wall_s']:.2f} s ({t_seq['stdout'].splitlines()[-1]})")
    print(f"LONG: auto records byte-identical to sequential: {same}", flush=True)
    if not same:
        raise SystemExit("auto and sequential records differ")


def memory(work: Path, args) -> None:
    print("writing a 60-second 3840x2160 H.264 video (and a copy: train and val need one each) ...", flush=True)
    folder = work / "uhd"
    make_videos(folder, 2, 60, 3840, 2160, 30.0, codec_options={"preset": "ultrafast"}, distinct=1)  # and a copy
    base = params_with(args.params, work, **two_split_params([folder]))
    for mode in ("auto", "sequential"):
        params = params_with(base, work, decode=mode)
        run = measure(job_args(folder, work / f"out_uhd_{mode}", params))
        print(f"  decode: {mode:10s}: {run['wall_s']:.1f} s, peak RSS of the largest process {run['max_rss_mb']:.0f} MB"
              f" ({run['stdout'].splitlines()[-1]})")  # fmt: skip
        print(f"MEMORY ({mode}): {run['max_rss_mb']:.0f} MB per process  (target <= 1024 MB)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=96, help="V short videos (the job also runs on 2V)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each short measurement; the fastest counts")
    parser.add_argument("--long-minutes", type=float, default=5.0)
    parser.add_argument("--long-repeat", type=int, default=5,
                        help="runs of each long measurement (the job's share is small next to its start-up)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--skip-short", action="store_true")
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    cores = this_machine()
    print(f"{cores} usable cores", flush=True)
    work = Path(tempfile.mkdtemp(prefix="vidseq-bench-"))
    started = time.perf_counter()
    try:
        if not args.skip_short:
            short_videos(work, args, cores)
        if not args.skip_long:
            long_videos(work, args, cores)
        if not args.skip_memory:
            memory(work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"benchmark took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
