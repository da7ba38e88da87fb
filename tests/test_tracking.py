"""Tests of training.tracking and training.lineage: one MLflow run shared by the stages, lineage tags."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import mlflow
import numpy as np
import pytest
import yaml
from orchestration_fixtures import BIN, TINY_PARAMS, copy_model_dir, run, tool_env

from pipeline import records
from vidseq.validation import flatten
from training.tracking import lineage, model_logging, runs
from vidseq.params import MlflowConfig

CONFIG = MlflowConfig(experiment_name="tracking-test")


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient(runs.tracking_uri())


def test_tracking_uri_is_mlflow_default_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert runs.tracking_uri() == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert runs.tracking_uri() == "sqlite:////elsewhere/x.db"


def test_start_run_writes_the_run_file_and_logs_params_spec_and_lineage(model_root, store, tmp_path):
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    spec = records.read_spec(str(model_dir))
    records_dir = str(model_root / "records")
    with runs.start_run(str(model_dir), TINY_PARAMS, spec, records_dir=records_dir, config=CONFIG) as active:
        run_id = active.info.run_id
    info = json.loads((model_dir / runs.RUN_FILE).read_text())
    assert info == {"run_id": run_id, "experiment_id": active.info.experiment_id, "tracking_uri": store}

    run = client().get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client().get_experiment(run.info.experiment_id).name == "tracking-test"
    assert client().get_experiment(run.info.experiment_id).artifact_location == (tmp_path / "mlruns").as_uri()
    params = run.data.params
    for key, value in flatten(TINY_PARAMS).items():  # every parameter, flattened
        assert params[key] == (json.dumps(value) if isinstance(value, list) else str(value)), key
    assert params["model.conv_filters"] == "[4, 8]"
    assert params["dataset.clip_shape"] == "4x32x32x3"
    assert params["dataset.classes"] == ",".join(spec.classes)
    assert params["dataset.sampling.split_salt"] == "s1"
    assert params["dataset.splits.train.clips"] == str(spec.splits["train"]["clips"])

    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == sha
    assert run.data.tags["vidseq.git.dirty"] in ("true", "false")
    assert run.data.tags["vidseq.records.dvc_md5"] == lineage.compute_dvc_hash(records_dir)
    assert run.data.tags["vidseq.records.dvc_md5"].endswith(".dir")
    assert run.data.tags["vidseq.records.hash_source"] == "computed"  # no dvc.lock describes these records
    assert run.data.metrics["preprocess_errors"] == 0

    downloaded = mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(tmp_path / "artifacts"))
    assert json.load(open(os.path.join(downloaded, "dataset.json"))) == spec.to_dict()
    summary = json.load(open(os.path.join(downloaded, "preprocessing", "errors_summary.json")))
    assert summary["count"] == 0


def test_resume_run_continues_the_same_run(model_root, store, tmp_path):
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    spec = records.read_spec(str(model_dir))
    with runs.start_run(str(model_dir), {"train": {"epochs": 1}}, spec, config=CONFIG) as active:
        mlflow.log_metric("from_train", 1.0)
    with runs.resume_run(str(model_dir)) as resumed:
        assert resumed.info.run_id == active.info.run_id
        mlflow.log_metric("from_evaluate", 2.0)
    with runs.resume_run(str(model_dir)) as again:
        mlflow.log_metric("from_register", 3.0)
    assert again.info.run_id == active.info.run_id
    run = client().get_run(active.info.run_id)
    assert {"from_train", "from_evaluate", "from_register"} <= set(run.data.metrics)
    assert run.info.status == "FINISHED"
    found = client().search_runs([run.info.experiment_id])
    assert [r.info.run_id for r in found] == [active.info.run_id]  # one run, not three


def test_resume_without_a_run_file_or_with_another_store_is_a_one_line_error(model_root, store, tmp_path, monkeypatch):
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    with pytest.raises(runs.TrackingError, match=r"mlflow_run.json not found: .* trained without MLflow tracking"):
        runs.resume_run(str(model_dir))
    with runs.start_run(str(model_dir), {}, records.read_spec(str(model_dir)), config=CONFIG):
        pass
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(runs.TrackingError, match=f"set MLFLOW_TRACKING_URI={store}") as error:
        runs.resume_run(str(model_dir))
    assert "\n" not in str(error.value)


def test_log_params_once_skips_equal_values_and_keeps_the_first_of_changed_ones(store, caplog):
    runs.configure(CONFIG)
    with mlflow.start_run() as active:
        assert runs.log_params_once({"evaluate": {"top_k": 2, "split": "test"}}) == {
            "evaluate.top_k": "2", "evaluate.split": "test",
        }  # fmt: skip
        caplog.set_level(logging.WARNING)
        assert runs.log_params_once({"evaluate": {"top_k": 3, "split": "test", "batch_size": 8}}) == {
            "evaluate.batch_size": "8"
        }
    assert "evaluate.top_k" in caplog.text
    assert client().get_run(active.info.run_id).data.params["evaluate.top_k"] == "2"


def test_history_is_logged_per_epoch(store):
    runs.configure(CONFIG)
    history = {"epoch": [0, 1, 2], "loss": [1.5, 1.0, 0.7], "val_accuracy": [0.2, 0.5, 0.75]}
    with mlflow.start_run() as active:
        assert runs.log_history(history) == 6
    points = client().get_metric_history(active.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in points) == [(0, 0.2), (1, 0.5), (2, 0.75)]


def test_epoch_logger_logs_every_epoch_during_fit(store):
    import keras

    runs.configure(CONFIG)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = np.random.default_rng(0).random((8, 3)), np.array([0, 1] * 4)
    with mlflow.start_run() as active:
        model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0, callbacks=[runs.epoch_logger()])
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert [m.step for m in client().get_metric_history(active.info.run_id, key)] == [0, 1, 2], key


def test_keras_model_is_logged_with_the_tensor_signature_and_an_input_example(model_root, store, tmp_path, capfd):
    import keras

    from mlflow.models import Model

    spec = records.read_spec(str(model_root / "models"))
    model = keras.saving.load_model(str(model_root / "models" / "model.keras"))
    runs.configure(CONFIG)
    capfd.readouterr()
    with mlflow.start_run() as active:
        info = model_logging.log_keras_model(model, spec)
    assert "step" not in capfd.readouterr().out  # MLflow's check of the example prints no Keras progress bar
    assert keras.config.is_interactive_logging_enabled()  # and training's progress is back as it was
    assert model_logging.logged_model_names(active.info.run_id) == {"keras_model": info.model_id}
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "keras_model"))
    meta = Model.load(local)
    assert "keras" in meta.flavors and "python_function" in meta.flavors
    (inputs,) = meta.signature.inputs.inputs
    (outputs,) = meta.signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype("float32"), (-1, *spec.clip_shape))
    assert (outputs.type, outputs.shape) == (np.dtype("float32"), (-1, spec.num_classes))
    example = meta.load_input_example(local)
    assert np.asarray(example).shape == (1, *spec.clip_shape)
    predictions = mlflow.pyfunc.load_model(info.model_uri).predict(np.zeros((2, *spec.clip_shape), np.float32))
    assert np.asarray(predictions).shape == (2, spec.num_classes)


def test_track_training_and_track_evaluation_share_one_run(model_root, store, tmp_path):
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
    run_id = runs.track_training(str(model_dir), params, records_dir=str(model_root / "records"), config=CONFIG)
    metrics_path = str(model_root / "reports" / "metrics.json")
    assert runs.track_evaluation(str(model_dir), metrics_path, params={"evaluate": {"batch_size": 8}}) == run_id

    run = client().get_run(run_id)
    expected = json.load(open(metrics_path))
    assert run.data.metrics["test_video_accuracy"] == pytest.approx(expected["video_accuracy"])
    assert run.data.metrics["test_shuffled_accuracy"] == pytest.approx(expected["shuffled_accuracy"])
    assert any(k.startswith("test_recall_") for k in run.data.metrics)  # per class
    for key in ("majority_baseline", "video_accuracy_ci_low", "video_accuracy_ci_high", "video_balanced_accuracy",
                "balanced_accuracy", "video_macro_f1"):  # fmt: skip
        assert run.data.metrics[f"test_{key}"] == pytest.approx(expected[key]), key
    for name in json.load(open(model_dir / "dataset.json"))["classes"]:
        assert run.data.metrics[f"test_video_support_{name}"] == expected[f"video_support_{name}"]
    assert "test_majority_class" not in run.data.metrics  # the one string: in metrics.json, not an MLflow metric
    history = json.load(open(model_dir / "history.json"))["history"]
    assert [m.step for m in client().get_metric_history(run_id, "val_loss")] == history["epoch"]
    listed = {a.path for a in client().list_artifacts(run_id, "training")} | {
        a.path for a in client().list_artifacts(run_id, "evaluation")
    }
    assert {"training/training_curves.png", "training/history.json", "evaluation/metrics.json",
            "evaluation/confusion_matrix.png", "evaluation/confusion_matrix.csv"} <= listed  # fmt: skip
    assert set(model_logging.logged_model_names(run_id)) == {"keras_model"}


def test_errors_summary_counts_by_stage_and_reason(tmp_path):
    rows = [
        {"path": "a.mp4", "reason": "no video stream (streams: audio)", "stage": "probe"},
        {"path": "b.mp4", "reason": "not a readable video file", "stage": "open"},
        {"path": "c.mp4", "reason": "not a readable video file", "stage": "open"},
    ]
    (tmp_path / "errors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    summary = lineage.errors_summary(str(tmp_path))
    assert summary["count"] == 4
    assert summary["by_stage"] == {"open": 2, "probe": 1, "unknown": 1}
    assert list(summary["by_reason"])[0] == "not a readable video file"
    assert lineage.errors_summary(str(tmp_path / "missing"))["count"] == 0


def test_records_hash_matches_dvc_and_prefers_a_fresh_dvc_lock_entry(model_root, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(model_root / "records", repo / "data" / "records")
    env = tool_env("sqlite:///unused.db")
    run(["git", "init", "-q"], repo, env)
    run([str(BIN / "dvc"), "init", "-q"], repo, env)
    run([str(BIN / "dvc"), "add", "-q", "data/records"], repo, env)
    dvc_md5 = yaml.safe_load((repo / "data" / "records.dvc").read_text())["outs"][0]["md5"]
    assert lineage.compute_dvc_hash(str(repo / "data" / "records")) == dvc_md5

    entry = yaml.safe_load((repo / "data" / "records.dvc").read_text())["outs"][0]
    lock = {"schema": "2.0", "stages": {
        "train": {"cmd": "x", "deps": [{**entry, "path": "data/records", "md5": "dep-md5.dir"}]},
        "preprocess": {"cmd": "y", "outs": [{**entry, "path": "data/records", "md5": "out-md5.dir"}]},
    }}  # fmt: skip
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    cwd = os.getcwd()
    os.chdir(repo)
    try:
        assert lineage.records_hash("data/records") == ("out-md5.dir", "dvc.lock")  # the writer's entry wins
        (repo / "data" / "records" / "extra.txt").write_text("changed after the lock was written")
        md5, source = lineage.records_hash("data/records")  # stale lock: computed instead
    finally:
        os.chdir(cwd)
    assert source == "computed" and md5 not in ("out-md5.dir", dvc_md5)
    assert lineage.records_hash("gs://bucket/records") == (None, "none")
    assert lineage.git_commit(str(tmp_path / "nowhere")) == (None, False)


@pytest.mark.parametrize(
    "data, records_dir, expected",
    [
        ({"raw_dir": "data/demo", "records_dir": "data/records"}, "data/records", "demo"),
        ({"raw_dir": "data/fight/manifest.csv", "records_dir": "data/records"}, "data/records", "fight"),
        ({"raw_dir": "/srv/videos/gestures/list.CSV", "records_dir": "data/records"}, None, "gestures"),
        ({"raw_dir": "gs://bucket/fight/manifest.csv", "records_dir": "data/records"}, "data/records", "fight"),
        ({"raw_dir": "s3://bucket/ucf101/", "records_dir": "data/records"}, "data/records", "ucf101"),
        ({"raw_dir": "data/fight/manifest.csv", "records_dir": "data/records", "name": "fight-2s"}, "data/records",
         "fight-2s"),
        ({"raw_dir": "data/fight/manifest.csv", "records_dir": "data/records", "name": "fight"}, "/other/ucf101",
         "ucf101"),  # records that are not the params': named by their folder
        ({"records_dir": "data/records"}, "data/records", "records"),
    ],
)
def test_the_dataset_is_named_by_data_name_or_the_videos_folder_never_the_manifest_file(data, records_dir, expected):
    from training.tracking import naming

    assert naming.dataset_name(records_dir, {"data": data}) == expected


def test_a_manifest_in_the_current_folder_is_named_by_that_folder(tmp_path, monkeypatch):
    from training.tracking import naming

    (tmp_path / "my_clips").mkdir()
    monkeypatch.chdir(tmp_path / "my_clips")
    assert naming.dataset_name(None, {"data": {"raw_dir": "manifest.csv"}}) == "my_clips"


def test_a_run_on_a_manifest_is_named_after_its_folder(model_root, store, tmp_path):
    spec = records.read_spec(str(model_root / "models"))
    params = {"data": {"raw_dir": "data/fight/manifest.csv", "records_dir": "data/records"}}
    with runs.start_run(str(tmp_path / "out"), params, spec, config=MlflowConfig("manifest-naming")) as active:
        run = mlflow.MlflowClient().get_run(active.info.run_id)
    assert run.data.tags["vidseq.dataset"] == "fight" and "-fight-1" in run.info.run_name
    assert "manifest" not in run.info.run_name
