"""After a pipeline run, a real ``mlflow server`` shows the experiment, the run and the champion.

Checked through MLflow's REST API (what the UI reads) on a free loopback port; also ``make ui``
and ``python -m training.summary``.
"""

from __future__ import annotations

import json
import re
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


def test_make_ui_runs_the_ui_entry_point_on_loopback():
    done = subprocess.run(["make", "-n", "ui"], cwd=REPO, capture_output=True, text=True, check=True,
                          env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    line = next(line for line in done.stdout.splitlines() if "training.ui" in line)
    assert "--host 127.0.0.1" in line  # the port: $PORT, else 5000 (training.ui)


def test_the_ui_prints_the_experiment_in_the_model_training_view_and_serves_the_store(repo, server, tmp_path):
    path, env = repo
    experiment = get(server, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"]
    port = free_port()
    args = [sys.executable, "-m", "training.ui", "--port", str(port), "--params", str(path / "params.yaml")]
    with running_server(args, port, tmp_path / "ui.log", env):
        ui = f"http://127.0.0.1:{port}"
        assert get(ui, "experiments/get-by-name", experiment_name=EXPERIMENT)["experiment"] == experiment
        with urllib.request.urlopen(ui + "/", timeout=60) as response:
            assert b"<html" in response.read(2000).lower()
    printed = (tmp_path / "ui.log").read_text()
    link = f"{ui}/#/experiments/{experiment['experiment_id']}/runs?workflowType=machine_learning"
    assert f"MLflow UI, the runs of {EXPERIMENT!r}: {link}" in printed and f"{ui}/#/models" in printed
    assert "error" not in printed.lower() and "Traceback" not in printed and "Warning" not in printed


def test_the_ui_without_a_store_creates_none_and_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    from training import ui

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    monkeypatch.setenv("PORT", "5123")  # as in PORT=5123 make ui
    assert ui.main(["--dry-run", "--params", str(REPO / "params.yaml")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "MLflow UI: http://127.0.0.1:5123  (no store yet at sqlite:///mlflow.db: `make demo` or `dvc repro` makes one)"
    assert out[1].endswith("mlflow ui --host 127.0.0.1 --port 5123 --backend-store-uri sqlite:///mlflow.db")
    assert list(tmp_path.iterdir()) == []


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


def artifact(server, run_id, path):
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    with urllib.request.urlopen(f"{server}/get-artifact?{query}", timeout=60) as r:
        return r.read()


def test_a_reviewer_sees_the_run_name_datasets_model_card_metrics_and_pictures(repo, server):
    import io

    from PIL import Image

    path, _ = repo
    champion = get(server, "registered-models/alias", name=MODEL, alias="champion")["model_version"]
    run_ = get(server, "runs/get", run_id=champion["run_id"])["run"]
    tags = {t["key"]: t["value"] for t in run_["data"]["tags"]}
    sha = tags["mlflow.source.git.commit"]
    experiment_name = tags.get("vidseq.dvc.experiment")  # the champion may come from test_dvc's dvc exp run
    if experiment_name:
        assert run_["info"]["run_name"] == experiment_name
    else:  # no dvc exp: <commit>-<videos folder>-<n>
        assert re.fullmatch(rf"{sha[:7]}-demo-\d+", run_["info"]["run_name"]), run_["info"]["run_name"]
    experiment = get(server, "experiments/get", experiment_id=run_["info"]["experiment_id"])["experiment"]
    assert {t["key"]: t["value"] for t in experiment["tags"]}["mlflow.experimentKind"] == "custom_model_development"

    inputs = {i["dataset"]["name"]: i for i in run_["inputs"]["dataset_inputs"]}
    assert set(inputs) == {"demo-train", "demo-val", "demo-test"}
    dataset = json.loads((path / "data" / "records" / "dataset.json").read_text())
    for split, context in (("train", "training"), ("val", "validation"), ("test", "evaluation")):
        found = inputs[f"demo-{split}"]
        assert {t["key"]: t["value"] for t in found["tags"]}["mlflow.data.context"] == context
        assert found["dataset"]["digest"] == tags["vidseq.records.dvc_md5"]
        assert json.loads(found["dataset"]["profile"])["clips"] == dataset["splits"][split]["clips"]

    card = tags["mlflow.note.content"]
    version = get(server, "model-versions/get", name=MODEL, version=champion["version"])["model_version"]
    model = get(server, "registered-models/get", name=MODEL)["registered_model"]
    assert version["description"] == card == model["description"]
    reports = json.loads((path / "reports" / "metrics.json").read_text())
    assert f"{reports['video_accuracy']:.4f}" in card and sha in card and "/invocations" in card
    assert "vidseq.registry" not in {t["key"] for t in version.get("tags", [])}

    model_id = version["source"].removeprefix("models:/")  # the version's logged model
    logged = get(server, f"logged-models/{model_id}")["model"]
    described = {t["key"]: t["value"] for t in logged["info"]["tags"]}["mlflow.note.content"]
    assert described.startswith("**`video_classifier`**: the servable model") and described.endswith(card)
    metrics = {m["key"]: m["value"] for m in logged["data"]["metrics"]}
    assert metrics["test_video_accuracy"] == reports["video_accuracy"]
    assert metrics["test_accuracy"] == reports["accuracy"]
    history = get(server, "metrics/get-history", run_id=champion["run_id"], metric_key="test_accuracy")["metrics"]
    assert len(history) == 1

    for name, kind in (("evaluation/confusion_matrix.png", "PNG"), ("evaluation/test_clips.png", "PNG"),
                       ("evaluation/test_clips.gif", "GIF")):  # fmt: skip
        image = Image.open(io.BytesIO(artifact(server, champion["run_id"], name)))
        assert image.format == kind and image.width > 100
    table = json.loads(artifact(server, champion["run_id"], "evaluation/per_class_table.json"))
    assert [row[0] for row in table["data"]] == dataset["classes"]
    assert b"total parameters" in artifact(server, champion["run_id"], "training/model_summary.txt")
    record = json.loads(artifact(server, champion["run_id"], f"registry/{MODEL}-v{champion['version']}.json"))
    assert record["version"] == int(champion["version"])


def test_summary_with_a_tracking_server_points_at_the_server_not_at_make_ui(monkeypatch):
    from training import summary
    from vidseq.params import MlflowConfig, RegisterConfig

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    lines = summary.summary_lines(RegisterConfig(), MlflowConfig(), None, None, None)
    assert lines[1] == "  browse: open http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert "make ui" in summary.summary_lines(RegisterConfig(), MlflowConfig(), None, None, None)[1]



@pytest.mark.parametrize("argv, environ, message", [
    ([], {"PORT": "abc"}, "error: PORT=abc is not a port: give a number from 1 to 65535 (default 5000)"),
    (["--port", "0"], {}, "error: --port=0 is not a port: give a number from 1 to 65535 (default 5000)"),
])  # fmt: skip
def test_the_ui_refuses_a_port_that_is_none_in_one_line(argv, environ, message, monkeypatch, capsys):
    from training import ui

    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    assert ui.main(["--dry-run", "--params", str(REPO / "params.yaml"), *argv]) == 2
    assert capsys.readouterr().err.strip() == message


def test_the_ui_on_another_database_asks_it_nothing(monkeypatch, capsys):
    from training import ui

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "postgresql://nobody@127.0.0.1:1/unreachable")
    assert ui.main(["--dry-run", "--params", str(REPO / "params.yaml")]) == 0  # at once: no connection tried
    out = capsys.readouterr().out.splitlines()
    assert "?workflowType=machine_learning" in out[0]
    assert out[1].endswith("--backend-store-uri postgresql://nobody@127.0.0.1:1/unreachable")
