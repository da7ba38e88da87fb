"""Tests of pipeline.coverage: warnings for empty or class-less splits; the stages refuse what they cannot use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from videos import write_tiny_video

from pipeline import coverage

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train": 0.5, "val": 0.25, "test": 0.25}


def items(*rows):
    return [SimpleNamespace(label=label, group=f"{label}{i}", split=split) for i, (label, split) in enumerate(rows)]


def test_every_class_in_every_split_gives_no_warning():
    listing = items(("a", "train"), ("b", "train"), ("a", "val"), ("b", "val"), ("a", "test"), ("b", "test"))
    assert coverage.check(listing, ["a", "b"], SPLITS) == []


def test_a_split_without_a_class_or_empty_is_a_warning():
    listing = items(("a", "train"), ("b", "train"), ("a", "val"), ("a", "test"))
    assert coverage.check(listing, ["a", "b"], SPLITS) == [
        "split 'val' has no video of class b (1 of 2 classes): add videos of those classes or change preprocess.split_salt",
        "split 'test' has no video of class b (1 of 2 classes): add videos of those classes or change preprocess.split_salt",
    ]
    (warning,) = coverage.check(items(("a", "train"), ("a", "val")), ["a"], SPLITS)
    assert warning.startswith("split 'test' is empty")
    assert coverage.check(items(("a", "train"), ("a", "val")), ["a"], {"train": 0.8, "val": 0.2, "test": 0.0}) == []


@pytest.mark.parametrize("split", ["train", "val"])
def test_no_train_or_no_val_video_is_a_warning_not_an_error(split):
    other = "val" if split == "train" else "train"
    listing = items(("a", other), ("b", other), ("a", "test"))
    warnings = coverage.check(listing, ["a", "b"], SPLITS)
    assert warnings[0].startswith(f"split '{split}' is empty (3 videos in 3 groups drew no {split} video")


def test_a_split_named_by_no_fraction_and_no_video_is_not_warned_about():
    assert coverage.check(items(("a", "test"), ("b", "test")), ["a", "b"], {"test": 1.0}) == []
    # a manifest's split column put a video into val although preprocess.splits gives it nothing
    (warning,) = coverage.check(items(("a", "test"), ("b", "test"), ("a", "val")), ["a", "b"], {"test": 1.0})
    assert warning.startswith("split 'val' has no video of class b")


def test_no_clips_after_decoding_is_a_warning():
    listed = {"train": 2, "val": 1, "test": 1}
    assert coverage.clip_warnings({"train": {"clips": 4}, "val": {"clips": 1}, "test": {"clips": 2}}, listed) == []
    (warning,) = coverage.clip_warnings({"train": {"clips": 4}, "val": {"clips": 0}, "test": {"clips": 2}}, listed)
    assert warning.startswith("split 'val' has no clips: every one of its 1 video(s) failed")
    assert coverage.clip_warnings({"test": {"clips": 3}}, {"test": 1}) == []  # no train, no val listed: nothing to say


def job(root: Path, work: Path, **preprocess):
    params = work / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": {"sequence_length": 4, "height": 16, "width": 16, **preprocess}}))
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(root), "--output", str(work / "records"),
         "--params", str(params), "--direct_running_mode=in_memory"],
        cwd=work, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_too_few_videos_preprocess_with_warnings_and_training_refuses_them(tmp_path):
    for name in ("a", "b"):
        write_tiny_video(tmp_path / "raw" / name / f"v_{name}_g01_c01.mp4", seconds=0.5, size=(16, 16))
    done = job(tmp_path / "raw", tmp_path, splits={"train": 0.5, "val": 0.25, "test": 0.25}, split_salt="s1")
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "records" / "dataset.json").read_text())
    assert spec["splits"]["val"]["clips"] == 0 and sum(s["videos"] for s in spec["splits"].values()) == 2
    assert any(w.startswith("split 'val' is empty (2 videos in 2 groups") for w in spec["warnings"])
    assert f"{len(spec['warnings'])} warning(s) in dataset.json" in done.stdout
    refused = stage("training.train", "--records", str(tmp_path / "records"), "--output", str(tmp_path / "m"))
    assert refused.returncode == 2, refused.stderr
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error: ")]
    assert "has no clips in split 'val'" in line and "training needs clips in train" in line
    assert "preprocess.splits that gives val a fraction" in line
    assert refused.stdout.strip() == "tensorflow imported: False"  # refused before any TensorFlow work
    assert not (tmp_path / "m").exists()


def test_a_test_set_alone_preprocesses_and_only_evaluation_of_test_accepts_it(tmp_path):
    for name in ("a", "b"):
        write_tiny_video(tmp_path / "raw" / name / f"v_{name}_g01_c01.mp4", seconds=0.5, size=(16, 16))
    done = job(tmp_path / "raw", tmp_path, splits={"test": 1.0})
    assert done.returncode == 0, done.stderr
    spec = json.loads((tmp_path / "records" / "dataset.json").read_text())
    assert spec["splits"]["test"]["videos"] == 2 and spec["warnings"] == []
    params = tmp_path / "eval.yaml"
    params.write_text(yaml.safe_dump({"evaluate": {"split": "val"}}))
    refused = stage("training.evaluate", "--records", str(tmp_path / "records"), "--model", str(tmp_path / "m"),
                    "--output", str(tmp_path / "reports"), "--params", str(params))  # fmt: skip
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error: ")]
    assert refused.returncode == 2 and "has no clips in split 'val'" in line and "set evaluate.split" in line
    assert refused.stdout.strip() == "tensorflow imported: False"
    refused = stage("training.train", "--records", str(tmp_path / "records"), "--output", str(tmp_path / "m"))
    assert "has no clips in split 'train'" in refused.stderr


def stage(module: str, *argv: str):
    """Runs a stage's ``main`` in a fresh interpreter; prints whether TensorFlow got imported."""
    code = (
        f"import sys; from {module} import main; code = main({list(argv)!r}); "
        "print('tensorflow imported:', 'tensorflow' in sys.modules); sys.exit(code)"
    )
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_warnings_go_to_stderr_the_summary_and_dataset_json(tmp_path):
    for g in range(6):
        write_tiny_video(tmp_path / "raw" / "many" / f"v_many_g{g:02d}_c01.mp4", seconds=0.5, size=(16, 16), seed=g)
    write_tiny_video(tmp_path / "raw" / "rare" / "v_rare_g00_c01.mp4", seconds=0.5, size=(16, 16), dx=0, dy=1)
    done = job(tmp_path / "raw", tmp_path, splits={"train": 0.4, "val": 0.3, "test": 0.3}, split_salt="s2")
    assert done.returncode == 0, done.stderr
    warnings = json.loads((tmp_path / "records" / "dataset.json").read_text())["warnings"]
    assert len(warnings) == 2 and all("has no video of class rare" in w for w in warnings)
    assert [f"warning: {w}" for w in warnings] == [x for x in done.stderr.splitlines() if x.startswith("warning: ")]
    assert "none failed; 2 warning(s) in dataset.json" in done.stdout
