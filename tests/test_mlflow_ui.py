"""After a pipeline run, a real ``mlflow server`` shows the experiment, the run and the champion.

Checked through MLflow's REST API (what the UI reads) on a free loopback port; also ``make ui``
and ``python -m training.summary``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
import yaml
from orchestration_fixtures import BIN, REPO, pipeline_repo, run, running_server
from servers import free_port

EXPERIMENT = "vidseq-test"
MODEL = "vidseq-cnn-lstm"


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return pipeline_repo(tmp_path_factory)


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    _, env = repo
    port = free_port()
    log = tmp_path_factory.mktemp("mlflow-server") / "server.log"
    args = [str(BIN / "mlflow"), "server", "--backend-store-uri", env["MLFLOW_TRACKING_URI"],
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    with running_server(args, port, log, env):
        yield f"http://127.0.0.1:{port}"


def get(server, endpoint, **query):
    with urllib.request.urlopen(f"{server}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}", timeout=60) as r:
        return json.load(r)


def post(server, endpoint, body):
    request = urllib.request.Request(f"{server}/api/2.0/mlflow/{endpoint}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.load(r)


def test_the_registered_champion_leads_to_its_run_with_metrics_artifacts_and_lineage(repo, server):
    path, env = repo
    model = get(server, "registered-models/get", name=MODEL)["registered_model"]
    aliases = {a["alias"]: a["version"] for a in model["aliases"]}
    assert "champion" in aliases and "challenger" in aliases
    champion = get(server, "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    assert champion["version"] == aliases["champion"]

    experiment = get(server, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    runs = post(server, "runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 100})["runs"]
    run_ = next(r for r in runs if r["info"]["run_id"] == champion["run_id"])
    metrics = {m["key"]: m["value"] for m in run_["data"]["metrics"]}
    assert {"test_video_accuracy", "test_accuracy", "test_shuffled_accuracy", "val_loss", "loss"} <= set(metrics)
    params = {p["key"]: p["value"] for p in run_["data"]["params"]}
    assert params["model.rnn_units"] == "8" and params["dataset.clip_shape"] == "4x32x32x3"
    tags = {t["key"]: t["value"] for t in run_["data"]["tags"]}
    subprocess.run(["git", "cat-file", "-e", tags["mlflow.source.git.commit"]], cwd=path, check=True)
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    records_md5 = next(o["md5"] for o in lock["stages"]["preprocess"]["outs"] if o["path"] == "data/records")
    assert tags["vidseq.records.dvc_md5"] == records_md5 and tags["vidseq.records.hash_source"] == "dvc.lock"

    history = get(server, "metrics/get-history", run_id=champion["run_id"], metric_key="val_loss")["metrics"]
    assert [m["step"] for m in history] == list(range(len(history))) and history
    listed = {f["path"] for f in get(server, "artifacts/list", run_id=champion["run_id"], path="evaluation")["files"]}
    assert {"evaluation/metrics.json", "evaluation/confusion_matrix.png"} <= listed
    top = {f["path"] for f in get(server, "artifacts/list", run_id=champion["run_id"])["files"]}
    assert {"dataset.json", "training", "preprocessing", "registry.json"} <= top


def test_the_ui_page_is_served(server):
    with urllib.request.urlopen(server + "/", timeout=60) as response:
        assert response.status == 200 and b"<html" in response.read(2000).lower()


def test_make_ui_starts_mlflow_ui_on_loopback_with_the_default_store():
    done = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if "mlflow ui" in line)
    assert "--host 127.0.0.1" in line and "sqlite:///mlflow.db" in line


def test_summary_prints_where_to_look_and_the_champion(repo):
    path, env = repo
    registry = json.loads((path / "reports" / "registry.json").read_text())
    out = run([sys.executable, "-m", "training.summary"], path, env).stdout
    assert "make ui" in out and "dvc metrics show" in out
    assert f"Champion: models:/{MODEL}@champion is version {registry['champion']['version']}" in out
    assert f"video_accuracy {registry['champion']['video_accuracy']:.4f}" in out


def test_summary_without_a_store_says_how_to_make_one_and_creates_nothing(tmp_path, monkeypatch, capsys):
    from training import summary

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    argv = ["--params", str(tmp_path / "params.yaml"), "--metrics", str(tmp_path / "m.json"),
            "--registry", str(tmp_path / "r.json")]  # fmt: skip
    assert summary.main(argv) == 0
    assert "Champion: none yet for vidseq-cnn-lstm: run `make demo` or `dvc repro`" in capsys.readouterr().out
    assert not (tmp_path / "mlflow.db").exists()
