"""Tests of training.crossval: group k-fold assignment, the summary, and a whole tiny cross-validation."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys

import pytest
import yaml
from videos import write_tiny_video

from pipeline.sources import InputError
from training import crossval
from training.model import TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def videos_of(groups: dict[str, dict[str, int]]) -> list[tuple[str, str]]:
    return [(g, label) for g, counts in groups.items() for label, n in counts.items() for _ in range(n)]


TABLES = {
    "one class per group": {f"g{i}": {"a" if i % 2 else "b": 2} for i in range(10)},
    "mixed groups": {f"g{i}": {"a": 1 + i % 3, "b": 1 + (i * 7) % 4} for i in range(12)},
    "unequal classes": {**{f"a{i}": {"a": 3} for i in range(9)}, **{f"b{i}": {"b": 1} for i in range(6)}},
    "one big group": {"big": {"a": 6, "b": 6}, **{f"g{i}": {"a" if i % 2 else "b": 1} for i in range(8)}},
}


@pytest.mark.parametrize("folds", [2, 3, 5])
@pytest.mark.parametrize("name", list(TABLES))
def test_every_group_lands_in_one_fold_and_classes_spread_evenly(name, folds):
    groups = TABLES[name]
    videos = videos_of(groups)
    assigned = crossval.assign_folds(videos, folds, seed=3)
    assert set(assigned) == set(groups) and set(assigned.values()) == set(range(folds))  # every fold used
    per_fold = [collections.Counter() for _ in range(folds)]
    for group, label in videos:
        per_fold[assigned[group]][label] += 1
    for label in {label for _, label in videos}:
        counts = [c[label] for c in per_fold]
        biggest = max(n for g in groups.values() for c, n in g.items() if c == label)  # one group cannot be split
        assert max(counts) - min(counts) <= biggest, (label, counts)


def test_the_assignment_is_deterministic_for_a_seed_and_changes_with_it():
    videos = videos_of({f"g{i}": {"a": 1, "b": 1} for i in range(12)})
    first = crossval.assign_folds(videos, 3, seed=1)
    assert crossval.assign_folds(list(reversed(videos)), 3, seed=1) == first
    assert any(crossval.assign_folds(videos, 3, seed=s) != first for s in range(2, 6))


@pytest.mark.parametrize("folds", [1, 4])
def test_too_few_groups_for_the_folds_is_refused(folds):
    with pytest.raises(InputError, match="--folds"):
        crossval.assign_folds(videos_of({"g1": {"a": 1}, "g2": {"b": 1}, "g3": {"a": 1}}), folds)


def test_each_fold_has_its_own_test_groups_and_val_groups_from_the_rest():
    groups = {f"g{i:02d}": {"a" if i % 2 else "b": 2} for i in range(20)}
    plans = crossval.fold_splits(videos_of(groups), 4, seed=0, val_fraction=0.2)
    tests = [{g for g, s in plan.items() if s == "test"} for plan in plans]
    assert set().union(*tests) == set(groups) and sum(map(len, tests)) == len(groups)  # each group tested once
    for plan in plans:
        val = [g for g, s in plan.items() if s == "val"]
        assert set(plan.values()) == {"train", "val", "test"} and len(val) == 3  # 15 non-test groups / 5
        assert {next(iter(groups[g])) for g in val} == {"a", "b"}  # both classes


def test_the_summary_is_the_mean_and_the_sample_standard_deviation():
    folds = [{"video_accuracy": 0.5, "majority_baseline": 0.5, "video_balanced_accuracy": 0.4},
             {"video_accuracy": 0.7, "majority_baseline": 0.6, "video_balanced_accuracy": 0.8},
             {"video_accuracy": 0.9, "majority_baseline": 0.7, "video_balanced_accuracy": 0.6}]  # fmt: skip
    summary = crossval.summarize(folds)
    assert summary["video_accuracy"] == pytest.approx({"mean": 0.7, "std": 0.2})
    assert summary["majority_baseline"] == pytest.approx({"mean": 0.6, "std": 0.1})
    assert summary["video_balanced_accuracy"]["std"] == pytest.approx(math.sqrt(0.04))
    assert crossval.summarize(folds[:1])["video_accuracy"] == {"mean": 0.5, "std": 0.0}


def test_feature_seconds_sum_the_splits_log_lines():
    log = ("train: features of 40 clips (640 frames) in 12.5s, 51.2 frames/s (0.3s of it waiting for decoded clips)\n"
           "val: features of 8 clips (128 frames) in 2.5s, 51.2 frames/s (0.0s of it waiting for decoded clips)\n")  # fmt: skip
    assert crossval.feature_seconds(log) == pytest.approx(15.0)
    assert crossval.feature_seconds("no such line") is None


def test_a_tiny_cross_validation_runs_every_fold_and_decodes_each_video_once(tmp_path):
    root = tmp_path / "videos"
    for c, (name, dx, dy) in enumerate([("left", -1, 0), ("right", 1, 0)]):
        for g in range(6):
            write_tiny_video(root / name / f"v_{name}_g{g:02d}_c01.mp4", seconds=1.0, size=(16, 16), dx=dx, dy=dy, seed=c * 10 + g)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "preprocess": {"sequence_length": 4, "height": 16, "width": 16, "fps": 6.0, "clips_per_video": 1},
        "model": TINY.as_dict(), "train": {"epochs": 1, "batch_size": 4},
    }))  # fmt: skip
    out = tmp_path / "cv"
    done = subprocess.run(
        [sys.executable, "-m", "training.crossval", "--input", str(root), "--output", str(out), "--folds", "2",
         "--params", str(params), "--val-fraction", "0.2"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fold 1" in done.stdout and "fold 2" in done.stdout and "mean" in done.stdout
    report = json.loads((out / "crossval.json").read_text())
    assert report["videos"] == 12 and report["groups"] == 12 and len(report["per_fold"]) == 2
    assert sum(f["test_videos"] for f in report["per_fold"]) == 12  # every video tested exactly once
    for fold in report["per_fold"]:
        assert 0 <= fold["video_accuracy"] <= 1 and fold["majority_baseline"] == 0.5
    first = json.loads((out / "fold-1" / "records" / "dataset.json").read_text())
    second = json.loads((out / "fold-2" / "records" / "dataset.json").read_text())
    assert first["decode"]["videos_reused"] == 0 and second["decode"]["videos_reused"] == 12  # decoded once, in fold 1


def test_the_real_footage_benchmark_groups_clips_by_their_source_video(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_footage", os.path.join(REPO, "benchmarks", "real_footage.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (tmp_path / "videos.txt").write_text(
        "https://example.org/a\nfi001: 0.13.50 - 0.15.60\nnofi001: 2.34.70 - 2.37.80\n\n"
        "https://example.org/b\nfi002: 1.00 - 1.02\nnofi005 - nofi007 : Mall\n"
    )  # fmt: skip
    for label, names in (("fight", ["fi001", "fi002", "fi003"]), ("noFight", ["nofi001", "nofi006"])):
        for name in names:
            (tmp_path / label).mkdir(exist_ok=True)
            (tmp_path / label / f"{name}.mp4").write_bytes(b"")
    assert bench.write_manifest(str(tmp_path), str(tmp_path / "m.csv")) == (5, 4)
    rows = (tmp_path / "m.csv").read_text().splitlines()
    groups = {os.path.basename(r.split(",")[0]): r.split(",")[2] for r in rows[1:]}
    assert groups == {"fi001.mp4": "src001", "nofi001.mp4": "src001", "fi002.mp4": "src002", "fi003.mp4": "solo-fi003",
                      "nofi006.mp4": "mall"}  # fmt: skip
