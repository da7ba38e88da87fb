"""Benchmark: the input pipeline's peak memory (RSS) over one epoch, and that it stays flat when the dataset doubles.

``python benchmarks/input_memory.py [--clips 20000] [--params params.yaml] [--folder DIR] [--keep]``

Writes ``2 x --clips`` synthetic clips of 16x112x112 (a textured background, a moving square,
sensor noise) through the pipeline's own encoder (:func:`pipeline.frames.encode_image`, JPEG
quality 90, and :func:`pipeline.records.encode_clip`) into TFRecord shards of about 64 MB,
then runs one training epoch of the input pipeline (:func:`training.data.make_dataset`:
shuffle, decode, ``train.augment``, batch, with ``train.cache``, ``train.shuffle_buffer`` and
``train.batch_size`` of ``params.yaml``), each in a fresh process, over ``--clips`` clips and
over twice as many, and reports each process's peak RSS (``VmHWM``). The goal: at most 2 GB,
and the doubled dataset within 10 % (or 100 MB) of the first. Exits 1 if it misses it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from pipeline import records  # noqa: E402
from pipeline.frames import encode_image  # noqa: E402

T, H, W = 16, 112, 112
CLASSES = ("left", "right", "up", "down")
SHARD_BYTES = 64 << 20
GOAL_BYTES = 2 << 30
FLAT = (0.10, 100 << 20)  # the doubled run may exceed the first by 10 % or 100 MB, whichever is larger


# --------------------------------------------------------------------------- writing


def synthetic_clip(index: int) -> tuple[list[bytes], int]:
    """One clip of 16 JPEG frames: a square moving over a textured, noisy background."""
    rng = np.random.default_rng(index)
    label = index % len(CLASSES)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    background = base + 30 * np.sin(yy[..., None] / rng.uniform(4, 12) + xx[..., None] / rng.uniform(4, 12))
    side = int(rng.integers(16, 32))
    y, x = rng.integers(side, H - side, 2)
    dy, dx = {0: (0, -3), 1: (0, 3), 2: (-3, 0), 3: (3, 0)}[label]
    frames = []
    for t in range(T):
        frame = background + rng.normal(0, 6, background.shape)
        top, left = int(np.clip(y + dy * t, 0, H - side)), int(np.clip(x + dx * t, 0, W - side))
        frame[top : top + side, left : left + side] = (240, 220, 40)
        frames.append(encode_image(np.clip(frame, 0, 255).astype(np.uint8), "jpeg", 90))
    return frames, label


def _framed(record: bytes) -> bytes:
    import google_crc32c

    def masked(data: bytes) -> int:
        crc = google_crc32c.value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    length = struct.pack("<Q", len(record))
    return length + struct.pack("<I", masked(length)) + record + struct.pack("<I", masked(record))


def write_part(args: tuple[str, int, int, int]) -> list[tuple[str, int]]:
    """Writes clips ``start .. stop - 1`` into shards of about 64 MB named ``part-P-S.tmp``; returns (name, clips)."""
    folder, part, start, stop = args
    written: list[tuple[str, int]] = []
    handle, name, size, count = None, "", 0, 0
    for index in range(start, stop):
        if handle is None:
            name = f"part-{part:03d}-{len(written):05d}.tmp"
            handle, size, count = open(os.path.join(folder, name), "wb"), 0, 0
        frames, label = synthetic_clip(index)
        record = records.encode_clip(frames, label, CLASSES[label], f"{CLASSES[label]}/v{index // 3:06d}.mp4",
                                     list(range(T)), [t / 8 for t in range(T)])  # fmt: skip
        data = _framed(record)
        handle.write(data)
        size, count = size + len(data), count + 1
        if size >= SHARD_BYTES:
            handle.close()
            written.append((name, count))
            handle = None
    if handle is not None:
        handle.close()
        written.append((name, count))
    return written


def write_dataset(folder: str, clips: int) -> list[tuple[str, int]]:
    """Writes ``clips`` clips as shards in ``folder`` (in parallel on the CPUs); returns (shard, clips) in order."""
    os.makedirs(folder, exist_ok=True)
    parts = max(1, min(os.cpu_count() or 1, 8)) * 2
    bounds = np.linspace(0, clips, parts + 1).astype(int)
    with multiprocessing.Pool(min(parts, os.cpu_count() or 1)) as pool:
        done = pool.map(write_part, [(folder, p, int(bounds[p]), int(bounds[p + 1])) for p in range(parts)])
    return [shard for part in done for shard in part]


def make_split(folder: str, shards: list[tuple[str, int]], source: str) -> int:
    """A records folder whose train split is ``shards`` (links to ``source``), with its dataset.json."""
    os.makedirs(folder, exist_ok=True)
    for index, (name, _) in enumerate(shards):
        target = os.path.join(folder, records.shard_name("train", index, len(shards)))
        if not os.path.exists(target):
            os.symlink(os.path.join(source, name), target)
    clips = sum(n for _, n in shards)
    spec = records.DatasetSpec(sequence_length=T, height=H, width=W, channels=3, frame_encoding="jpeg",
                               classes=CLASSES, splits={"train": {"clips": clips, "videos": clips // 3}},
                               sampling={"synthetic": True})  # fmt: skip
    with open(os.path.join(folder, records.DATASET_JSON), "w", encoding="utf-8") as handle:
        handle.write(spec.to_json())
    return clips


# --------------------------------------------------------------------------- measuring (in a fresh process)


def measure(records_dir: str, params_path: str) -> dict:
    """One epoch of the training input pipeline; peak RSS of this process."""
    from training.data import cache_plan, make_dataset
    from vidseq.params import Params

    cfg = Params.load(params_path).train
    spec = records.read_spec(records_dir)
    ds = make_dataset(records_dir, "train", spec, cfg.batch_size, training=True, augment=cfg.augment,
                      seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, cache=cfg.cache,
                      cache_dir=os.path.join(records_dir, "cache"))  # fmt: skip
    start = time.perf_counter()
    clips = 0
    for batch, _ in ds:
        clips += int(batch.shape[0])
    seconds = time.perf_counter() - start
    plan = cache_plan(spec, "train", records_dir, cfg.cache, "cache")
    return {"clips": clips, "seconds": seconds, "peak_rss": _peak_rss(), "cache": plan}


def _peak_rss() -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def run_measure(records_dir: str, params: str) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, __file__, "--measure", records_dir, "--params", params],
                          env=env, capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"measuring {records_dir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/input_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20000, help="clips of the first run; the second has twice as many")
    parser.add_argument("--params", default=os.path.join(ROOT, "params.yaml"))
    parser.add_argument("--folder", help="where the records go (default: a temporary folder, removed after)")
    parser.add_argument("--keep", action="store_true", help="keep the records folder")
    parser.add_argument("--measure", metavar="RECORDS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.params)))
        return 0

    folder = args.folder or tempfile.mkdtemp(prefix="vidseq-memory-")
    try:
        start = time.perf_counter()
        shards = write_dataset(os.path.join(folder, "shards"), 2 * args.clips)
        size = sum(os.path.getsize(os.path.join(folder, "shards", n)) for n, _ in shards)
        print(f"wrote {2 * args.clips} clips of {T}x{H}x{W} (JPEG q90, {size / 2 / args.clips / 1024:.0f} KB a clip) "
              f"in {len(shards)} shards, {size / 2**30:.2f} GiB, in {time.perf_counter() - start:.0f} s")  # fmt: skip
        half, total = 0, 0
        for half in range(len(shards) + 1):
            total += shards[half][1] if half < len(shards) else 0
            if total >= args.clips:
                break
        runs = []
        for name, part in (("first", shards[: half + 1]), ("doubled", shards)):
            clips = make_split(os.path.join(folder, name), part, os.path.join(folder, "shards"))
            result = run_measure(os.path.join(folder, name), args.params)
            decoded = clips * T * H * W * 3
            print(f"{clips:6d} clips: peak RSS {result['peak_rss'] / 2**30:.2f} GiB over one epoch "
                  f"({result['clips'] / result['seconds']:.0f} clips/s; cache: {result['cache']}; decoded they'd be "
                  f"{decoded / 2**30:.1f} GiB as uint8, {4 * decoded / 2**30:.1f} GiB as float32)")  # fmt: skip
            runs.append(result)
        first, doubled = runs[0]["peak_rss"], runs[1]["peak_rss"]
        flat = doubled <= first + max(FLAT[0] * first, FLAT[1])
        ok = max(first, doubled) <= GOAL_BYTES and flat
        print(f"peak RSS {first / 2**30:.2f} -> {doubled / 2**30:.2f} GiB when the clips double "
              f"(goal <= {GOAL_BYTES / 2**30:.0f} GiB and flat): {'ok' if ok else 'MISSED'}")  # fmt: skip
        return 0 if ok else 1
    finally:
        if not args.keep and not args.folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
