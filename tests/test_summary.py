"""Tests of training.summary's lines: the test numbers with their baseline and interval, the champion or why none."""

from __future__ import annotations

from training import summary
from vidseq.params import MlflowConfig, RegisterConfig

METRICS = {
    "video_accuracy": 0.625, "video_accuracy_ci_low": 0.50250, "video_accuracy_ci_high": 0.73334, "videos": 64,
    "majority_baseline": 0.625, "majority_class": "noFight", "video_balanced_accuracy": 0.5, "accuracy": 0.6146,
    "shuffled_accuracy": 0.6146,
}  # fmt: skip


def test_the_test_line_puts_the_majority_baseline_and_the_interval_beside_the_accuracy():
    test, warning = summary.test_lines(METRICS)
    assert test == ("Test: video accuracy 0.6250 (95 % Wilson interval 0.5025-0.7333, 64 videos), majority baseline "
                    "0.6250 (always noFight), balanced video accuracy 0.5000, clip accuracy 0.6146, "
                    "shuffled-frames accuracy 0.6146")  # fmt: skip
    assert warning.startswith("  warning: video accuracy 0.625 does not beat the majority baseline 0.625")


def test_a_model_clearly_above_the_baseline_gets_no_warning_and_chance_is_gone():
    lines = summary.test_lines({**METRICS, "video_accuracy": 0.95, "video_accuracy_ci_low": 0.87,
                                "video_accuracy_ci_high": 0.98})  # fmt: skip
    assert len(lines) == 1 and "video accuracy 0.9500" in lines[0]
    old = summary.test_lines({"video_accuracy": 0.5, "accuracy": 0.5, "chance": 0.5})  # a metrics.json of before
    assert old == ["Test: video accuracy 0.5000, clip accuracy 0.5000"]


def test_without_a_champion_the_summary_says_the_gate_and_how_to_predict_anyway(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    registry = {"model_name": "fight", "version": 3, "decision": "rejected", "reason": "video_accuracy 0.6250 < 0.8"}
    lines = summary.summary_lines(RegisterConfig("fight"), MlflowConfig(), METRICS, registry, None)
    (line,) = [x for x in lines if x.startswith("Champion:")]
    assert "no version passed the gate (register.min_accuracy 0.8)" in line
    assert "--model models:/fight@challenger" in line and "--model models" in line
