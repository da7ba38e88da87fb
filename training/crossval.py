"""python -m training.crossval: group k-fold cross-validation, preprocessing once and training/evaluating per fold.

Usage::

    python -m training.crossval --input VIDEOS_OR_MANIFEST --output DIR [--folds 5] [--params params.yaml]
                                [--seed 0] [--val-fraction 0.15]

The videos are listed once; whole groups go to folds, stratified by class (:func:`assign_folds`).
For fold K, ``DIR/fold-K/manifest.csv`` holds every video with a ``split`` column: ``test`` the
fold, ``val`` whole groups carved from the rest per class, ``train`` the rest. Each fold then runs
``python -m pipeline`` (sharing the reuse cache ``DIR/clips.cache``: videos are decoded in the
first fold and reused after), ``python -m training.train --no-track`` and
``python -m training.evaluate`` as subprocesses, and its ``reports/metrics.json`` is read. With
a frozen pretrained backbone the feature cache (``train.feature_cache``) is keyed clip by clip,
so each clip goes through the backbone once in the whole run, whichever fold and split it is in.
Prints per fold and mean ± sample standard deviation of the test video accuracy, the majority
baseline and the balanced accuracy, with each stage's seconds (the subprocesses' wall time);
writes ``DIR/crossval.json``.
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from pipeline.sources import InputError, VideoItem, list_videos
from training import artifacts
from vidseq import cli
from vidseq.errors import WorkFailedError
from vidseq.params import DEFAULT_PARAMS

logger = logging.getLogger(__name__)

METRICS = ("video_accuracy", "majority_baseline", "video_balanced_accuracy")
STAGES = ("preprocess", "train", "evaluate")
_FEATURES_LINE = re.compile(r"features of \d+ clips \((\d+) frames\) in ([0-9.]+)s")


def assign_folds(videos: Sequence[tuple[str, str]], folds: int, seed: int = 0) -> dict[str, int]:
    """Assigns each group to one of ``folds`` folds, classes spread evenly across them.

    Args:
        videos: ``(group, label)`` of each video.
        folds: how many folds (at least 2, at most the number of groups).
        seed: orders groups of equal size; the same seed gives the same folds.

    Returns:
        ``{group: fold}`` with folds numbered from 0. Groups go largest first, each to the fold
        whose share of the group's classes would stay smallest (ties: the fold with fewer
        videos, then the lower number).
    """
    per_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for group, label in videos:
        per_group[group][label] += 1
    if folds < 2 or folds > len(per_group):
        raise InputError(f"{folds} folds need between 2 and {len(per_group)} (the number of groups): pass --folds in that range")
    totals = collections.Counter(label for _, label in videos)
    order = sorted(per_group)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -sum(per_group[g].values()))  # stable: equal sizes keep the seeded order
    counts = [collections.Counter() for _ in range(folds)]
    assigned = {}
    for group in order:
        mine = per_group[group]

        def cost(fold: int) -> tuple[float, int, int]:
            share = sum(((counts[fold][c] + n) / totals[c]) ** 2 for c, n in mine.items())
            return share, sum(counts[fold].values()), fold

        best = min(range(folds), key=cost)
        counts[best].update(mine)
        assigned[group] = best
    return assigned


def fold_splits(videos: Sequence[tuple[str, str]], folds: int, seed: int = 0, val_fraction: float = 0.15) -> list[dict[str, str]]:
    """Each fold's ``{group: split}``: ``test`` its groups, ``val`` about ``val_fraction`` of the rest
    (whole groups, stratified by class, by :func:`assign_folds`), ``train`` the others."""
    if not 0 < val_fraction < 0.5:
        raise InputError(f"--val-fraction {val_fraction} must be above 0 and below 0.5")
    test_fold = assign_folds(videos, folds, seed)
    result = []
    for fold in range(folds):
        rest = [(g, label) for g, label in videos if test_fold[g] != fold]
        parts = min(max(2, round(1 / val_fraction)), len({g for g, _ in rest}))
        val = {g for g, part in assign_folds(rest, parts, seed + 1 + fold).items() if part == 0}
        result.append({g: "test" if f == fold else "val" if g in val else "train" for g, f in test_fold.items()})
    return result


def summarize(per_fold: Sequence[Mapping[str, float]], keys: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """``{key: {mean, std}}`` over the folds; ``std`` is the sample standard deviation (0 for one fold)."""
    summary = {}
    for key in keys:
        values = [float(f[key]) for f in per_fold]
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
        summary[key] = {"mean": mean, "std": math.sqrt(var)}
    return summary


def feature_seconds(log: str) -> float | None:
    """Seconds the frozen-feature path spent computing features, summed over splits (None: it did not run)."""
    found = [float(m.group(2)) for m in _FEATURES_LINE.finditer(log)]
    return sum(found) if found else None


def write_manifest(path: str, items: Sequence[VideoItem], splits: Mapping[str, str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "split"])
        for item in items:
            where = item.path if "://" in item.path else os.path.abspath(item.path)
            writer.writerow([where, item.label, item.group, splits[item.group]])


def _stage(name: str, argv: list[str]) -> tuple[float, str]:
    """Runs one stage as a subprocess; its wall seconds and its stderr."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise WorkFailedError(f"{name} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")
    return seconds, done.stderr


def run_fold(fold_dir: str, manifest: str, params: str, cache: str) -> dict:
    records, model, reports = (os.path.join(fold_dir, n) for n in ("records", "model", "reports"))
    seconds = {}
    seconds["preprocess"], _ = _stage("preprocess", ["pipeline", "--input", manifest, "--output", records, "--params", params, "--cache", cache])
    seconds["train"], log = _stage("train", ["training.train", "--records", records, "--output", model, "--params", params, "--no-track", "--verbose", "0"])
    seconds["evaluate"], evaluated = _stage("evaluate", ["training.evaluate", "--records", records, "--model", model, "--output", reports, "--params", params])
    with open(os.path.join(reports, artifacts.METRICS_JSON), encoding="utf-8") as handle:
        metrics = json.load(handle)
    result = {k: float(metrics[k]) for k in METRICS}
    result["test_videos"] = int(metrics.get("videos", 0) or 0)
    result["seconds"] = seconds
    result["feature_seconds"] = feature_seconds(log)
    result["evaluate_feature_seconds"] = feature_seconds(evaluated)
    return result


def _line(label: str, values: Mapping[str, float]) -> str:
    return f"{label:>6}  " + "  ".join(f"{k} {values[k]:.3f}" for k in METRICS)


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.crossval", description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="folder of class folders, or a manifest CSV (path,label[,group])")
    parser.add_argument("--output", required=True, help="working folder: fold-K/ (manifest, records, model, reports), clips.cache, crossval.json")
    parser.add_argument("--folds", type=int, default=5, help="number of folds (default: %(default)s)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file for every stage (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="changes the fold assignment, deterministically (default: %(default)s)")
    parser.add_argument("--val-fraction", type=float, default=0.15, help="share of each fold's non-test videos kept for val (default: %(default)s)")
    args = parser.parse_args(argv)
    listing = list_videos(args.input, {"train": 1.0, "val": 0.0, "test": 0.0})
    for error in listing.errors:
        logger.warning("left out of every fold: %s: %s", error["path"], error["reason"])
    videos = [(item.group, item.label) for item in listing.items]
    plans = fold_splits(videos, args.folds, args.seed, args.val_fraction)
    os.makedirs(args.output, exist_ok=True)
    cache = os.path.join(args.output, "clips.cache")
    folds = []
    for k, plan in enumerate(plans, start=1):
        fold_dir = os.path.join(args.output, f"fold-{k}")
        os.makedirs(fold_dir, exist_ok=True)
        manifest = os.path.join(fold_dir, "manifest.csv")
        write_manifest(manifest, listing.items, plan)
        result = run_fold(fold_dir, manifest, args.params, cache)
        folds.append(result)
        print(_line(f"fold {k}", result) + "  seconds " + " ".join(f"{s} {result['seconds'][s]:.1f}" for s in STAGES), flush=True)
    summary = summarize(folds)
    print(f"{'mean':>6}  " + "  ".join(f"{k} {summary[k]['mean']:.3f} ± {summary[k]['std']:.3f}" for k in METRICS))
    report = {"input": args.input, "folds": args.folds, "seed": args.seed, "val_fraction": args.val_fraction,
              "videos": len(listing.items), "groups": len({g for g, _ in videos}), "per_fold": folds, "summary": summary}  # fmt: skip
    with open(os.path.join(args.output, "crossval.json"), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
