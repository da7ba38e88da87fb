"""Tests of training.train: a real (tiny) training run, learning, resume after a kill, the CLI."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from training_fixtures import write_records

from pipeline import records
from training import artifacts, fit
from training import train as tr
from vidseq.params import AugmentConfig, ModelConfig, TrainConfig
from training.data import make_dataset
from training.model import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_params(path, **train):
    """A params file with the tiny model and the given ``train`` values."""
    values = {"epochs": 2, "batch_size": 4, "cache": True, **train}
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump({"model": TINY.as_dict(), "train": values}, handle)
    return str(path)


@pytest.fixture(scope="module")
def tiny_records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    write_records(directory, classes=("left", "right", "up"), videos_per_class={"train": 4, "val": 1, "test": 1},
                  sequence_length=4, height=16, width=16)  # fmt: skip
    return directory


def test_train_cli_writes_model_spec_history_and_curves(tiny_records, tmp_path, caplog, capsys):
    out = tmp_path / "model"
    params = write_params(tmp_path / "params.yaml", mixed_precision=True, epochs=3)
    caplog.set_level(logging.WARNING)
    argv = ["--records", tiny_records, "--output", str(out), "--params", params, "--verbose", "0"]
    assert tr.main(argv) == 0
    assert "best epoch" in capsys.readouterr().out
    assert "mixed_precision is only used on GPUs" in caplog.text  # CPU: warned and ignored
    assert sorted(os.listdir(out)) == sorted(
        [artifacts.MODEL_FILE, "dataset.json", artifacts.HISTORY_JSON, artifacts.HISTORY_CSV, artifacts.CURVES_PNG, "mlflow_run.json"]
    )  # backup and checkpoint removed on success; the MLflow run the later stages continue
    run = json.loads((out / "mlflow_run.json").read_text())
    import mlflow

    logged = mlflow.get_run(run["run_id"])  # the session's throw-away store (tests/conftest.py)
    assert logged.data.params["train.epochs"] == "3"
    assert len(mlflow.MlflowClient().get_metric_history(run["run_id"], "val_loss")) == 3
    assert (out / "dataset.json").read_text() == open(os.path.join(tiny_records, "dataset.json")).read()
    with open(out / artifacts.HISTORY_CSV, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    history = json.loads((out / artifacts.HISTORY_JSON).read_text())
    assert history["initial_epoch"] == 0 and history["history"]["epoch"] == [0, 1, 2]
    assert 0 <= history["best_epoch"] <= 2


def test_summary_prints_shapes_through_each_layer(tiny_records, tmp_path, capsys):
    params = write_params(tmp_path / "params.yaml")
    assert tr.main(["--records", tiny_records, "--params", params, "--summary"]) == 0
    text = capsys.readouterr().out
    assert "(batch, 4, 16, 16, 3)" in text  # the clip input
    assert "frame_difference (Subtract)" in text and "(batch, 3, 16, 16, 3)" in text  # T - 1 differences
    assert "per_frame (TimeDistributed)" in text and "(batch, 3, 16)" in text  # CNN features per step
    assert "(batch, 3, 8, 8, 4)" in text  # inside the CNN, with the time axis kept
    assert "lstm_1 (LSTM)" in text and "(batch, 3)" in text
    assert f"total parameters: {3407:,}" in text


def test_empty_validation_split_is_a_clear_error(tmp_path, capsys):
    directory = str(tmp_path / "records")
    write_records(directory, classes=("left", "right"), videos_per_class={"train": 1, "val": 0},
                  sequence_length=2, height=8, width=8)  # fmt: skip
    argv = ["--records", directory, "--output", str(tmp_path / "m"), "--params", write_params(tmp_path / "p.yaml")]
    assert tr.main(argv) == 2
    assert "has no clips in split 'val'" in capsys.readouterr().err  # refused before TensorFlow's work


def test_small_easy_problem_is_learned_well_above_chance(tmp_path):
    """Left vs right vs up vs down at 24x24, 4 frames: chance is 0.25; the model must see motion."""
    directory = str(tmp_path / "records")
    spec = write_records(directory, classes=("left", "right", "up", "down"),
                         videos_per_class={"train": 16, "val": 4, "test": 6}, sequence_length=4,
                         height=24, width=24, seed=5)  # fmt: skip
    model_cfg = ModelConfig(conv_filters=(8, 16), rnn_units=16, dropout=0.0)  # the defaults, small
    cfg = TrainConfig(epochs=30, batch_size=8, learning_rate=1e-2, early_stopping_patience=0,
                      augment=AugmentConfig(crop_min_fraction=1.0))  # fmt: skip
    result = fit.train(directory, str(tmp_path / "model"), model_cfg, cfg)
    ds = make_dataset(directory, "test", spec, 64)
    correct = [np.argmax(result.model.predict_on_batch(c), axis=1) == y for c, y in ds.as_numpy_iterator()]
    accuracy = float(np.mean(np.concatenate(correct)))
    assert accuracy >= 0.7, f"test accuracy {accuracy:.2f} (chance 0.25); history {result.history}"


def _backup_epoch(backup_dir):
    try:
        with open(os.path.join(backup_dir, "training_metadata.json")) as handle:
            return json.load(handle)["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_a_killed_run_resumes_from_its_last_epoch(tiny_records, tmp_path):
    out = str(tmp_path / "model")
    params = write_params(tmp_path / "params.yaml", epochs=25, early_stopping_patience=0)
    argv = ["--records", tiny_records, "--output", out, "--params", params, "--verbose", "0"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    proc = subprocess.Popen([sys.executable, "-m", "training.train", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    backup = os.path.join(out, artifacts.BACKUP_DIR)
    deadline = time.monotonic() + 120
    try:
        while _backup_epoch(backup) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"training ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        reached = _backup_epoch(backup)
        assert reached >= 2, "no backup within 120 s"
        proc.send_signal(signal.SIGKILL)  # no clean-up handlers run: a real crash
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, artifacts.MODEL_FILE))

    assert tr.main(argv) == 0  # the same command again
    history = json.loads(open(os.path.join(out, artifacts.HISTORY_JSON)).read())
    assert history["initial_epoch"] >= reached  # continued, did not start over
    assert history["history"]["epoch"] == list(range(25))  # one row per epoch, killed run's included
    assert not os.path.exists(backup)
    assert records.read_spec(out).clip_shape == (4, 16, 16, 3)


def test_a_backup_of_another_model_is_not_restored(tiny_records, tmp_path, caplog):
    out = tmp_path / "model"
    (out / artifacts.BACKUP_DIR).mkdir(parents=True)
    (out / artifacts.BACKUP_DIR / "latest.weights.h5").write_bytes(b"not the weights of this model")
    (out / artifacts.RESUME_JSON).write_text(json.dumps({"model": {"rnn_units": 999}, "dataset": {}}))
    caplog.set_level(logging.WARNING)
    cfg = TrainConfig(epochs=1, batch_size=8)
    result = fit.train(tiny_records, str(out), TINY, cfg)
    assert "holds a backup of another model or dataset: starting over" in caplog.text
    assert result.initial_epoch == 0 and result.history["epoch"] == [0]
    assert not (out / artifacts.BACKUP_DIR).exists() and not (out / artifacts.RESUME_JSON).exists()


@pytest.mark.parametrize("missing", ["train", "val"])
def test_train_refuses_records_without_train_or_val_clips_in_one_line(tmp_path, capsys, missing):
    directory = str(tmp_path / "records")
    counts = {"train": 2, "val": 1, "test": 1}
    counts[missing] = 0
    write_records(directory, classes=("left", "right"), videos_per_class=counts, sequence_length=4, height=16, width=16)
    params = write_params(tmp_path / "params.yaml")
    assert tr.main(["--records", directory, "--output", str(tmp_path / "model"), "--params", params]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: {directory} has no clips in split '{missing}' (clips per split: ")
    assert "training needs clips in train (to fit) and val" in line and f"gives {missing} a fraction" in line
    assert not (tmp_path / "model").exists()
