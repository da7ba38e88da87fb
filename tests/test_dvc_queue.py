"""Experiments in DVC's temporary copies log into the workspace's store, in parallel, losing no run.

``dvc exp run --temp`` and queued experiments run in a copy under ``.dvc/tmp/exps/`` that DVC
deletes; with the default store (``sqlite:///mlflow.db``, relative) the stages resolve it against
the workspace (``DVC_ROOT``), and a new sqlite store's tables are created by one process at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from orchestration_fixtures import BIN, REPO, TINY_PARAMS, copy_pipeline_repo, run, tool_env

from training.tracking import runs

DVC = str(BIN / "dvc")
EXPERIMENT = TINY_PARAMS["mlflow"]["experiment_name"]
MODEL = TINY_PARAMS["register"]["model_name"]


# --------------------------------------------------------------------------- where the store is


def test_inside_a_dvc_stage_the_default_store_is_the_workspaces(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "ws"))
    assert runs.tracking_uri() == f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db?timeout=30")
    assert runs.tracking_uri() == f"sqlite:///{tmp_path / 'ws' / 'stores' / 'team.db'}?timeout=30"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert runs.tracking_uri() == "sqlite:////elsewhere/x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert runs.tracking_uri() == "http://127.0.0.1:5000"


def test_relative_file_stores_resolve_against_the_workspace_and_others_are_kept(tmp_path):
    root = tmp_path / "ws"
    assert runs.resolve_store_uri("mlruns", root) == str(root / "mlruns")
    assert runs.resolve_store_uri("file:./mlruns", root) == (root / "mlruns").as_uri()
    assert runs.resolve_store_uri("file:///abs/mlruns", root) == "file:///abs/mlruns"
    assert runs.resolve_store_uri("postgresql://u@h/db", root) == "postgresql://u@h/db"
    assert runs.resolve_store_uri("sqlite:///:memory:", root) == "sqlite:///:memory:"
    assert runs.resolve_store_uri("sqlite:///mlflow.db", None) == "sqlite:///mlflow.db"


def test_a_temporary_copy_names_its_workspace_without_dvc_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DVC_ROOT", raising=False)
    copy = tmp_path / "ws" / ".dvc" / "tmp" / "exps" / "tmpab12" / "sub"
    copy.mkdir(parents=True)
    assert runs.workspace_root(str(copy)) == tmp_path / "ws"
    assert runs.workspace_root(str(tmp_path)) is None


def test_stages_starting_at_once_on_a_new_sqlite_store_all_succeed(tmp_path):
    """Three processes configure a store that does not exist yet (MLflow alone: all three fail here)."""
    code = "from training.tracking import runs; from vidseq.params import MlflowConfig; print(runs.configure(MlflowConfig('race')))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'new.db'}"}
    workers = [subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]  # fmt: skip
    results = [(w.wait(timeout=300), *w.communicate()) for w in workers]
    assert [code for code, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    assert len({out.strip() for _, out, _ in results}) == 1  # one experiment, seen by all three


# --------------------------------------------------------------------------- the queue


def queue_states(path: Path, env: dict[str, str], names: list[str]) -> tuple[dict[str, str], str]:
    out = run([DVC, "queue", "status"], path, env).stdout
    states = {}
    for line in out.splitlines():
        fields = line.split()
        for name in names:
            if name in fields:
                states[name] = fields[-1]
    return states, out


def wait_for_queue(path: Path, env: dict[str, str], names: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states, out = queue_states(path, env, names)
        failed = [n for n, s in states.items() if s == "Failed"]
        if failed:
            logs = run([DVC, "queue", "logs", failed[0]], path, env).stdout
            raise AssertionError(f"experiment {failed[0]} failed\n{out}\n{logs[-4000:]}")
        if len(states) == len(names) and all(s == "Success" for s in states.values()):
            return out
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {timeout} s\n{out}")


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    """Three experiments queued in a copy of the DVC-run repository, run by two workers, default store."""
    path = copy_pipeline_repo(tmp_path_factory, tmp_path_factory.mktemp("queue") / "repo")
    env = {k: v for k, v in tool_env("").items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    names = {"units-5": 5, "units-6": 6, "units-7": 7}
    for name, units in names.items():
        run([DVC, "exp", "run", "--queue", "-n", name, "-S", f"model.rnn_units={units}"], path, env)
    log = path.parent / "queue-start.log"
    try:
        with open(log, "wb") as out:  # the workers inherit these descriptors: a pipe would stay open until they exit
            subprocess.run([DVC, "queue", "start", "-j", "2"], cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT,
                           check=True, timeout=300)  # fmt: skip
        assert "Started '2' new experiments task queue workers" in log.read_text(), log.read_text()
        status = wait_for_queue(path, env, list(names), timeout=1200)
    finally:
        with open(log, "ab") as out:
            subprocess.run([DVC, "queue", "stop", "--kill"], cwd=path, env=env, stdout=out, stderr=subprocess.STDOUT,
                           timeout=120)  # fmt: skip
    return path, names, status


def test_three_queued_experiments_on_two_workers_all_land_in_the_workspace_store(queued):
    path, names, _ = queued
    store = path / "mlflow.db"
    assert store.exists(), "the workspace has no mlflow.db: the runs went into the temporary copies"
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(found) == 3 and {r.info.status for r in found} == {"FINISHED"}
    by_units = {int(r.data.params["model.rnn_units"]): r for r in found}
    assert sorted(by_units) == sorted(names.values())
    for run_ in found:
        assert {"test_video_accuracy", "loss"} <= set(run_.data.metrics)
        assert {a.path for a in client.list_artifacts(run_.info.run_id)} >= {"dataset.json", "registry.json"}
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert sorted(v.run_id for v in versions) == sorted(r.info.run_id for r in found)
    assert client.get_model_version_by_alias(MODEL, "champion").run_id in {r.info.run_id for r in found}


def test_each_queued_run_is_named_after_its_dvc_experiment(queued):
    path, names, _ = queued
    listed = run([DVC, "exp", "list", "--name-only"], path, tool_env("")).stdout.split()
    assert sorted(listed) == sorted(names)
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], max_results=100)
    expected = {units: name for name, units in names.items()}
    assert {int(r.data.params["model.rnn_units"]): r.info.run_name for r in found} == expected
    assert {int(r.data.params["model.rnn_units"]): r.data.tags["vidseq.dvc.experiment"] for r in found} == expected


def test_an_experiment_run_with_temp_also_logs_into_the_workspace_store(queued):
    """Runs after the queue tests (file order): one more experiment, in a temporary copy, default store."""
    path, names, _ = queued
    env = {k: v for k, v in tool_env("").items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    run([DVC, "exp", "run", "--temp", "-n", "temp-4", "-S", "model.rnn_units=4"], path, env, timeout=900)
    client = mlflow.MlflowClient(f"sqlite:///{path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id], max_results=100)
    assert len(found) == len(names) + 1
    new = next(r for r in found if r.data.params["model.rnn_units"] == "4")
    assert new.info.status == "FINISHED" and new.info.run_name == "temp-4"
    assert len(client.search_model_versions(f"name='{MODEL}'")) == len(names) + 1
