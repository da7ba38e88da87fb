"""Benchmark: what adding 10 % videos to a preprocessed set costs, as a ratio of a full run measured in the same run.

Usage::

    .venv/bin/python benchmarks/incremental.py [--videos 40] [--seconds 10] [--size 1280x720] [--grow 0.1]
                                               [--repeat 3] [--folder DIR] [--params params.yaml]

With ``--folder`` (class folders, e.g. a copy of UCF101 or ``data/demo``) the set is its videos;
else ``--videos`` generated ones (10 s, 1280x720, 30 fps, H.264 with a keyframe every 250 frames,
two classes): few, but each costs its decoding, so that decoding outweighs the run's fixed cost
as it does at UCF101's 13,320 videos, and the ratio measures the decoding saved. Every run is the
job's default command (no runner flags, the default reuse cache beside the output), in order:

1. **first**: the set without its last ``--grow`` share (every 10th video by path), from nothing;
2. **grown**: the whole set into the same output: the new videos are decoded, the others reused;
3. **no news**: the same again: nothing to decode; its time is the fixed cost of a run
   (start-up, listing, deciding what to reuse, reading the cache, encoding and writing the records);
4. **full**: the whole set from scratch (``--no-cache``, a new output): what the growth cost before.

Steps 2-4 run ``--repeat`` times, alternated (the cache restored to its state after step 1 before
each grown run), and the fastest of each counts. Printed: decoded frames grown / full (target <= 0.2), time beyond the fixed cost
(grown - no news) / (full - no news) (target <= 0.5), and whether the grown run's records are
byte-identical to the full run's (shards and ``errors.jsonl``; ``dataset.json`` but for its
``decode`` block, which says what each run cost).
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.preprocess import make_videos  # noqa: E402
from pipeline import records  # noqa: E402


def job(input_dir: Path, output: Path, params: str, *flags: str) -> dict:
    """Runs the job's command; its wall time and the ``decode`` block of its ``dataset.json``."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(input_dir), "--output", str(output), "--params", params, *flags],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"the job failed ({done.returncode}): {done.stderr[-2000:]}")
    spec = json.loads((output / records.DATASET_JSON).read_text())
    return {"wall_s": wall, **spec["decode"], "line": done.stdout.strip().splitlines()[-1]}


def identical(a: Path, b: Path) -> list[str]:
    """What differs between two records folders (empty: identical but for what decoding cost)."""
    names = sorted(set(os.listdir(a)) | set(os.listdir(b)))
    differ = [n for n in names if n != records.DATASET_JSON and (not (a / n).exists() or not (b / n).exists()
              or (a / n).read_bytes() != (b / n).read_bytes())]  # fmt: skip
    spec_a, spec_b = (json.loads((x / records.DATASET_JSON).read_text()) for x in (a, b))
    if {**spec_a, "decode": None} != {**spec_b, "decode": None}:
        differ.append(records.DATASET_JSON)
    return differ


def link_tree(paths: list[Path], root: Path, target: Path) -> None:
    for path in paths:
        copy = target / path.relative_to(root)
        copy.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, copy)  # same inode and mtime: the hash memo sees the same file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=40, help="generated videos (without --folder)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each generated video")
    parser.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT of each generated video")
    parser.add_argument("--folder", help="a folder of class folders to use instead of generated videos")
    parser.add_argument("--grow", type=float, default=0.1, help="share of the set added by the second run")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--repeat", type=int, default=3, help="runs of grown, no news and full; the fastest of each counts")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="vidseq-incremental-"))
    try:
        if args.folder:
            root = Path(args.folder).resolve()
            videos = sorted(p for p in root.glob("*/*") if p.is_file() and not p.name.startswith("."))
        else:
            root = work / "videos"
            width, height = (int(x) for x in args.size.split("x"))
            videos = sorted(make_videos(root, args.videos, args.seconds, width, height,
                                        codec_options={"preset": "ultrafast"}))  # fmt: skip
        step = max(2, round(1 / args.grow))
        new = videos[step - 1 :: step]
        base = [v for v in videos if v not in set(new)]
        listing = work / "listing"
        link_tree(base, root, listing)
        out = work / "records"

        first = job(listing, out, args.params)
        snapshot = work / "snapshot"  # the state after the first run, restored before each grown run
        shutil.copytree(out, snapshot / "records")
        shutil.copytree(work / "records.cache", snapshot / "records.cache")
        link_tree(new, root, listing)
        time.sleep(2.1)  # the added files settle, as a week's additions have: their hashes may be remembered
        runs: dict[str, list[dict]] = {"grown": [], "no news": [], "full": []}
        for attempt in range(args.repeat):  # alternated; the fastest of each kept: a busy machine's noise
            for name in ("records", "records.cache"):
                shutil.rmtree(work / name)
                shutil.copytree(snapshot / name, work / name)
            runs["grown"].append(job(listing, out, args.params))
            if attempt == 0:
                shutil.copytree(out, work / "grown-records")
            runs["no news"].append(job(listing, out, args.params))
            shutil.rmtree(work / "full", ignore_errors=True)
            runs["full"].append(job(listing, work / "full", args.params, "--no-cache"))
        grown, no_news, full = ({**r[-1], "wall_s": min(x["wall_s"] for x in r)} for r in runs.values())
        differ = identical(work / "grown-records", work / "full")
        cache_mb = sum(p.stat().st_size for p in (work / "records.cache").rglob("*") if p.is_file()) / 2**20
        records_mb = sum(p.stat().st_size for p in (work / "full").iterdir()) / 2**20

        frames = grown["frames_decoded"] / full["frames_decoded"]
        decoding = full["wall_s"] - no_news["wall_s"]  # what a full run costs beyond the fixed cost
        if decoding <= 0:
            print(f"the full run ({full['wall_s']:.1f} s) took no longer than the fixed cost ({no_news['wall_s']:.1f} s): "
                  "decoding is lost in the noise; use more or longer videos (--videos, --seconds, --size)")  # fmt: skip
        beyond = (grown["wall_s"] - no_news["wall_s"]) / decoding if decoding > 0 else float("nan")
        what = args.folder or f"generated, {args.seconds:g} s {args.size} each"
        print(f"set: {len(videos)} videos ({len(base)} first, {len(new)} added), {what}")
        for name, run in (("first", first), ("grown", grown), ("no news", no_news), ("full", full)):
            each = ", ".join(f"{r['wall_s']:.1f}" for r in runs.get(name, [run]))
            print(f"  {name:8s} {run['wall_s']:7.1f} s (runs: {each})  decoded {run['frames_decoded']:7d} frames  "
                  f"reused {run.get('videos_reused', 0):4d}  hashed {run.get('videos_hashed', 0):4d} videos")  # fmt: skip
        print(f"decoded frames, grown / full: {frames:.3f} (target <= 0.2) {'PASS' if frames <= 0.2 else 'FAIL'}")
        print(f"time beyond the fixed cost, (grown - no news) / (full - no news): {beyond:.3f} (target <= 0.5) "
              f"{'PASS' if beyond <= 0.5 else 'FAIL'}")  # fmt: skip
        print(f"fixed cost (no news) / full: {no_news['wall_s'] / full['wall_s']:.3f}")
        print(f"records of the grown run identical to a from-scratch run: {'yes' if not differ else 'NO: ' + ', '.join(differ)}")
        print(f"reuse cache {cache_mb:.1f} MiB for records of {records_mb:.1f} MiB")
        if differ or frames > 0.2 or not beyond <= 0.5:
            sys.exit(1)
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
