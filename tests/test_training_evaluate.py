"""Tests of training.evaluate: metric logic on a hand-made case, and the stage end to end."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from training_fixtures import write_records

from pipeline.records import ContractError
from training import artifacts, evaluate
from training import metrics as ev
from vidseq.params import EvaluateConfig
from training.model import build_tiny_model
from training.artifacts import MODEL_FILE

# Three videos, eight clips, interleaved. v3's clips vote 2-1 for the right class, but its
# averaged probabilities pick the wrong one: video-level accuracy averages, it does not vote.
CLASSES = ("a", "b", "c")
VIDEO_IDS = ["v1", "v3", "v2", "v1", "v3", "v2", "v1", "v3"]
LABELS = np.array([0, 2, 1, 0, 2, 1, 0, 2])
PROBS = np.array(
    [
        [0.60, 0.30, 0.10],  # v1 -> a  right
        [0.40, 0.05, 0.55],  # v3 -> c  right
        [0.40, 0.35, 0.25],  # v2 -> a  wrong
        [0.20, 0.50, 0.30],  # v1 -> b  wrong (top-2 misses too)
        [0.45, 0.05, 0.50],  # v3 -> c  right
        [0.10, 0.80, 0.10],  # v2 -> b  right
        [0.50, 0.10, 0.40],  # v1 -> a  right
        [0.90, 0.04, 0.06],  # v3 -> a  wrong
    ]
)


def test_clip_and_top_k_accuracy():
    assert ev.accuracy(LABELS, PROBS) == pytest.approx(5 / 8)
    assert ev.top_k_accuracy(LABELS, PROBS, 2) == pytest.approx(7 / 8)
    assert ev.top_k_accuracy(LABELS, PROBS, 3) == 1.0
    assert ev.top_k_accuracy(LABELS, PROBS, 10) == 1.0  # k is capped at the class count


def test_video_level_averages_clip_probabilities():
    ids, labels, probs = ev.video_level(PROBS, LABELS, VIDEO_IDS)
    assert ids == ["v1", "v3", "v2"]
    assert labels.tolist() == [0, 2, 1]
    np.testing.assert_allclose(probs[0], [1.3 / 3, 0.9 / 3, 0.8 / 3])
    np.testing.assert_allclose(probs[1], [1.75 / 3, 0.14 / 3, 1.11 / 3])
    assert probs.argmax(axis=1).tolist() == [0, 0, 1]  # v3 wrong although 2 of 3 clips were right
    assert ev.accuracy(labels, probs) == pytest.approx(2 / 3)


def test_video_with_mixed_labels_is_an_error():
    with pytest.raises(ValueError, match="'v1' has clips with different labels"):
        ev.video_level(PROBS[:2], np.array([0, 1]), ["v1", "v1"])


def test_confusion_matrix_and_per_class_scores():
    cm = ev.confusion_matrix(LABELS, PROBS.argmax(axis=1), 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 2]]  # rows actual, columns predicted
    scores = ev.per_class_scores(cm)
    np.testing.assert_allclose(scores["precision"], [2 / 4, 1 / 2, 2 / 2])
    np.testing.assert_allclose(scores["recall"], [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(scores["f1"], [4 / 7, 1 / 2, 4 / 5])
    assert scores["support"].tolist() == [3, 2, 3]
    never_predicted = ev.per_class_scores(np.array([[1, 0], [1, 0]]))
    assert never_predicted["precision"].tolist() == [0.5, 0.0]  # 0, not NaN
    assert never_predicted["f1"][1] == 0.0


def test_compute_metrics_is_flat():
    metrics = ev.compute_metrics(LABELS, PROBS, VIDEO_IDS, CLASSES, 2, PROBS[:, ::-1], PROBS)
    assert metrics["accuracy"] == pytest.approx(5 / 8)
    assert metrics["top_2_accuracy"] == pytest.approx(7 / 8)
    assert metrics["video_accuracy"] == pytest.approx(2 / 3)
    assert metrics["reversed_accuracy"] == pytest.approx(5 / 8)
    assert metrics["macro_f1"] == pytest.approx((4 / 7 + 1 / 2 + 4 / 5) / 3)
    assert metrics["f1_c"] == pytest.approx(0.8)
    assert "chance" not in metrics  # 1/classes hid that a model can equal the commonest class
    assert metrics["clips"] == 8 and metrics["videos"] == 3
    assert "shuffled_accuracy" in metrics and "shuffled_video_accuracy" in metrics
    # videos v1 (a), v3 (c), v2 (b) -> a, a, b: one of each class, so the majority baseline is 1/3 ("a", the first)
    assert metrics["majority_baseline"] == pytest.approx(1 / 3) and metrics["majority_class"] == "a"
    assert metrics["video_balanced_accuracy"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    assert (metrics["video_accuracy_ci_low"], metrics["video_accuracy_ci_high"]) == pytest.approx(ev.wilson_interval(2, 3))
    assert metrics["video_support_a"] == metrics["video_support_b"] == metrics["video_support_c"] == 1
    assert (metrics["video_precision_a"], metrics["video_recall_a"], metrics["video_f1_a"]) == pytest.approx((0.5, 1, 2 / 3))
    assert (metrics["video_precision_c"], metrics["video_recall_c"], metrics["video_f1_c"]) == (0.0, 0.0, 0.0)
    assert metrics["video_macro_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert [k for k, v in metrics.items() if not isinstance(v, (int, float))] == ["majority_class"]
    json.dumps(metrics)


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    labels, predicted = np.array([0, 0, 0, 0, 1]), np.array([0, 0, 0, 0, 0])
    assert ev.accuracy(labels, np.eye(3)[predicted]) == 0.8  # always "0": 4 of 5
    assert ev.balanced_accuracy(labels, predicted, 3) == 0.5  # class 2 has no video: not counted
    assert ev.balanced_accuracy(labels, labels, 3) == 1.0
    assert np.isnan(ev.balanced_accuracy(labels[:0], predicted[:0], 3))


def test_majority_baseline_is_the_share_of_the_commonest_class():
    assert ev.majority_baseline(np.array([1, 0, 1, 2, 1]), 3) == (0.6, 1)
    assert ev.majority_baseline(np.array([2, 0]), 3) == (0.5, 0)  # a tie: the first class
    share, _ = ev.majority_baseline(np.array([], dtype=np.int64), 3)
    assert np.isnan(share)


@pytest.mark.parametrize("right,trials", [(0, 10), (3, 10), (40, 64), (47, 64), (64, 64), (1, 1)])
def test_wilson_interval_solves_the_score_equation(right, trials):
    low, high = ev.wilson_interval(right, trials)
    p, z = right / trials, ev.WILSON_Z
    assert 0.0 <= low <= p <= high <= 1.0 and low < high
    for bound in (low, high):  # each bound q solves (p - q)^2 = z^2 q (1 - q) / n, or is 0 / 1 at the ends
        if bound not in (0.0, 1.0):
            assert (p - bound) ** 2 == pytest.approx(z * z * bound * (1 - bound) / trials)
    if right == 0:
        assert low == 0.0 and high == pytest.approx(z * z / (trials + z * z))
    if right == trials:
        assert high == 1.0 and low == pytest.approx(trials / (trials + z * z))


def test_wilson_interval_of_no_trials_is_unknown():
    assert all(np.isnan(x) for x in ev.wilson_interval(0, 0))


def _scores(video_accuracy, baseline, low, high, videos=64):
    return {"video_accuracy": video_accuracy, "majority_baseline": baseline, "majority_class": "noFight",
            "video_accuracy_ci_low": low, "video_accuracy_ci_high": high, "videos": videos}  # fmt: skip


def test_baseline_warning_says_plainly_when_the_model_does_not_beat_the_majority():
    equal = ev.baseline_warning(_scores(0.625, 0.625, 0.503, 0.734))
    assert equal.startswith("video accuracy 0.625 does not beat the majority baseline 0.625")
    assert "always answering 'noFight' on the 64 test videos" in equal
    assert "does not beat" in ev.baseline_warning(_scores(0.55, 0.625, 0.43, 0.67))
    within = ev.baseline_warning(_scores(0.703, 0.625, 0.582, 0.801), "val")
    assert "above the majority baseline 0.625" in within and "0.582-0.801" in within and "not shown to beat it" in within
    assert "64 val videos" in within
    assert ev.baseline_warning(_scores(0.9, 0.625, 0.8, 0.95)) is None
    assert ev.baseline_warning({"video_accuracy": 0.5}) is None  # an older metrics.json: nothing to compare


def test_shuffle_time_permutes_frames_only_and_is_seeded():
    clips = np.arange(4 * 6 * 2 * 2 * 1, dtype=np.float32).reshape(4, 6, 2, 2, 1)
    shuffled = ev.shuffle_time(clips, np.random.default_rng(0))
    assert shuffled.shape == clips.shape
    for original, mixed in zip(clips, shuffled):
        frames = sorted(map(tuple, original.reshape(6, -1)))
        assert sorted(map(tuple, mixed.reshape(6, -1))) == frames  # same frames, each intact
    assert not np.array_equal(shuffled, clips)
    np.testing.assert_array_equal(shuffled, ev.shuffle_time(clips, np.random.default_rng(0)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny records and an (untrained) tiny model saved as the training stage saves it."""
    root = tmp_path_factory.mktemp("evaluate")
    records_dir = str(root / "records")
    spec = write_records(
        records_dir, classes=("left", "right", "up"), videos_per_class={"train": 1, "val": 1, "test": 2},
        sequence_length=4, height=16, width=16,
    )  # fmt: skip
    model_dir = root / "model"
    model_dir.mkdir()
    build_tiny_model(spec).save(str(model_dir / MODEL_FILE))
    (model_dir / "dataset.json").write_text(spec.to_json())
    return records_dir, str(model_dir), spec


def test_evaluate_writes_reports(trained, tmp_path):
    records_dir, model_dir, spec = trained
    out = str(tmp_path / "reports")
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {top_k: 2, batch_size: 5}\n")
    assert evaluate.main(["--records", records_dir, "--model", model_dir, "--output", out, "--params", str(params)]) == 0
    metrics = json.loads((tmp_path / "reports" / artifacts.METRICS_JSON).read_text())
    assert metrics["clips"] == spec.splits["test"]["clips"] == 12 and metrics["videos"] == 6
    for key in ("accuracy", "video_accuracy", "shuffled_accuracy", "reversed_accuracy", "top_2_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0
    with open(os.path.join(out, artifacts.PREDICTIONS_CSV), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and set(rows[0]) == {"video_id", "actual", "predicted", "confidence"}
    assert all(row["actual"] == row["video_id"].split("/")[0] for row in rows)
    with open(os.path.join(out, artifacts.CONFUSION_CSV), newline="") as handle:
        matrix = list(csv.reader(handle))
    assert matrix[0] == ["actual\\predicted", "left", "right", "up"]
    assert sum(int(v) for row in matrix[1:] for v in row[1:]) == 12
    assert os.path.getsize(os.path.join(out, artifacts.CONFUSION_PNG)) > 0
    with open(os.path.join(out, artifacts.PER_CLASS_CSV), newline="") as handle:
        per_class = list(csv.DictReader(handle))
    assert [row["class"] for row in per_class] == ["left", "right", "up"]
    assert [int(row["support"]) for row in per_class] == [4, 4, 4]  # clips
    assert [int(row["video_support"]) for row in per_class] == [2, 2, 2]  # videos
    for row in per_class:
        assert float(row["video_f1"]) == pytest.approx(metrics[f"video_f1_{row['class']}"], abs=1e-4)
    assert metrics["majority_baseline"] == pytest.approx(1 / 3)
    assert metrics["video_accuracy_ci_low"] <= metrics["video_accuracy"] <= metrics["video_accuracy_ci_high"]


def test_evaluate_warns_but_succeeds_when_the_model_answers_the_commonest_class(trained, tmp_path, monkeypatch,
                                                                                  capsys, caplog):  # fmt: skip
    records_dir, model_dir, spec = trained
    real = ev.predict_split

    def always_left(model, records, records_spec, cfg, feature_cache=None):
        pred = real(model, records, records_spec, cfg, feature_cache)
        constant = np.tile(np.eye(len(spec.classes))[0], (len(pred["labels"]), 1))
        return {**pred, "probs": constant}

    monkeypatch.setattr(ev, "predict_split", always_left)
    params = tmp_path / "params.yaml"
    params.write_text("evaluate: {batch_size: 5}\n")
    out = str(tmp_path / "reports")
    with caplog.at_level("WARNING", logger="training.metrics"):
        code = evaluate.main(["--records", records_dir, "--model", model_dir, "--output", out, "--params", str(params)])
    assert code == 0
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "training.metrics"]
    assert len(warnings) == 1
    assert "video accuracy 0.333 does not beat the majority baseline 0.333 (always answering 'left'" in warnings[0].message
    printed = capsys.readouterr().out
    assert "video_accuracy=0.3333" in printed and "majority_baseline=0.3333" in printed
    assert "majority_class=left" in printed and "chance" not in printed


def test_evaluate_refuses_records_with_other_classes(trained, tmp_path):
    records_dir, model_dir, _ = trained
    other = str(tmp_path / "other")
    write_records(
        other, classes=("left", "down", "up"), videos_per_class={"test": 1}, sequence_length=4, height=16, width=16
    )
    with pytest.raises(ContractError, match=r"trained on classes \['left', 'right', 'up'\]"):
        ev.evaluate(other, model_dir, str(tmp_path / "r"), EvaluateConfig())


def test_evaluate_refuses_records_of_another_shape(trained, tmp_path):
    _, model_dir, _ = trained
    other = str(tmp_path / "other")
    write_records(
        other, classes=("left", "right", "up"), videos_per_class={"test": 1}, sequence_length=6, height=16, width=16
    )
    with pytest.raises(ContractError, match=r"records are \(6, 16, 16, 3\) but the model expects \(4, 16, 16, 3\)"):
        ev.evaluate(other, model_dir, str(tmp_path / "r"), EvaluateConfig())
