"""Tests of training.tracking.relocation: a local store moved (or copied) with its repository keeps working artifacts."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from orchestration_fixtures import use_store

from training.tracking import relocation, runs
from vidseq.params import MlflowConfig

CONFIG = MlflowConfig(experiment_name="moving")
MODEL = "moving-model"


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return pd.DataFrame({"answer": [len(str(v)) for v in model_input["video"]]})


def make_store(monkeypatch, folder: Path) -> dict[str, str]:
    """A store in ``folder`` as the stages leave it: an experiment, a run with an artifact, a registered model."""
    folder.mkdir(parents=True)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(folder)  # as a stage runs: MLflow puts its Default experiment in ./mlruns/0, a bare path
    use_store(monkeypatch, folder)
    runs.configure(CONFIG)
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "notes/hello.txt")
        info = mlflow.pyfunc.log_model(name="echo", python_model=Echo())
    version = mlflow.register_model(info.model_uri, MODEL)
    return {"run_id": run.info.run_id, "version": version.version}


def database_text(database: Path) -> str:
    connection = sqlite3.connect(database)
    try:
        return "\n".join(line for line in connection.iterdump())
    finally:
        connection.close()


def check_works_from(folder: Path, made: dict[str, str], tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    run = client.get_run(made["run_id"])
    assert run.info.artifact_uri.startswith((folder / "mlruns").as_uri())
    downloaded = mlflow.artifacts.download_artifacts(run_id=made["run_id"], artifact_path="notes/hello.txt",
                                                     dst_path=str(tmp_path / "download"))  # fmt: skip
    assert Path(downloaded).read_text() == "hello"
    version = client.get_model_version(MODEL, made["version"])
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version.version}")
    assert list(model.predict(pd.DataFrame({"video": ["abc"]}))["answer"]) == [3]
    experiment = mlflow.get_experiment_by_name(CONFIG.experiment_name)
    assert experiment.artifact_location == (folder / "mlruns").as_uri()


def test_a_moved_store_points_at_its_new_folder_and_new_runs_land_there(monkeypatch, tmp_path):
    old, new = tmp_path / "repo", tmp_path / "moved repo"  # a space: the URIs are percent-encoded
    made = make_store(monkeypatch, old)
    old.rename(new)
    use_store(monkeypatch, new)
    assert runs.open_store() == f"sqlite:///{new / 'mlflow.db'}"
    assert str(old) not in database_text(new / "mlflow.db")
    check_works_from(new, made, tmp_path)
    assert mlflow.get_experiment("0").artifact_location in (str(new / "mlruns" / "0"), (new / "mlruns" / "0").as_uri())
    runs.configure(CONFIG)
    with mlflow.start_run() as later:
        mlflow.log_text("after the move", "notes/later.txt")
    assert (new / "mlruns" / later.info.run_id / "artifacts" / "notes" / "later.txt").is_file()
    assert not old.exists()
    before = database_text(new / "mlflow.db")
    assert runs.open_store() and database_text(new / "mlflow.db") == before  # in place: nothing more to do


def test_a_copy_uses_its_own_artifacts_and_leaves_the_original_alone(monkeypatch, tmp_path):
    original, copy = tmp_path / "repo", tmp_path / "copy"
    made = make_store(monkeypatch, original)
    shutil.copytree(original, copy)
    fingerprint = hashlib.sha256((original / "mlflow.db").read_bytes()).hexdigest()
    use_store(monkeypatch, copy)
    runs.configure(CONFIG)
    with mlflow.start_run() as later:  # without the repair, its artifacts would go into the original's mlruns/
        mlflow.log_text("in the copy", "notes/copy.txt")
    assert (copy / "mlruns" / later.info.run_id).is_dir() and not (original / "mlruns" / later.info.run_id).exists()
    check_works_from(copy, made, tmp_path)
    assert hashlib.sha256((original / "mlflow.db").read_bytes()).hexdigest() == fingerprint


def test_a_database_moved_without_its_artifacts_keeps_the_paths_that_still_work(monkeypatch, tmp_path):
    old = tmp_path / "repo"
    made = make_store(monkeypatch, old)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(old / "mlflow.db", tmp_path / "elsewhere" / "mlflow.db")
    assert relocation.follow(tmp_path / "elsewhere" / "mlflow.db") is None
    use_store(monkeypatch, tmp_path / "elsewhere")
    check_works_from(old, made, tmp_path)


def test_only_the_stores_own_artifact_folder_is_rewritten(monkeypatch, tmp_path):
    old, new = tmp_path / "repo", tmp_path / "moved"
    make_store(monkeypatch, old)
    outside = (tmp_path / "team-artifacts").as_uri()
    mlflow.create_experiment("put elsewhere", artifact_location=outside)
    similar = f"{(old / 'mlruns').as_uri()}-backup/1"  # starts like the old root but is another folder
    client = mlflow.MlflowClient()
    experiment_id = mlflow.get_experiment_by_name(CONFIG.experiment_name).experiment_id
    client.set_experiment_tag(experiment_id, "note", similar)
    old.rename(new)
    changed = relocation.follow(new / "mlflow.db")
    assert changed is not None and changed["from"] == str(old / "mlruns") and changed["to"] == str(new / "mlruns")
    use_store(monkeypatch, new)
    assert mlflow.get_experiment_by_name("put elsewhere").artifact_location == outside
    assert mlflow.get_experiment(experiment_id).tags["note"] == similar


@pytest.mark.parametrize("content", [b"", b"not a database at all, just bytes" * 10])
def test_a_file_that_is_no_store_is_left_alone(tmp_path, content):
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlflow.db").write_bytes(content)
    if content:
        with pytest.raises(sqlite3.DatabaseError):
            relocation.follow(tmp_path / "mlflow.db")
    else:
        assert relocation.follow(tmp_path / "mlflow.db") is None
    assert (tmp_path / "mlflow.db").read_bytes() == content
