"""Tests of training.register: versions, @challenger/@champion and the promotion gate."""

from __future__ import annotations

import json
import math

import mlflow
import pytest
import yaml
from orchestration_fixtures import TINY_PARAMS, copy_model_dir

from training import register as reg
from training import model_logging, tracking
from training.orchestration_config import MlflowConfig, RegisterConfig

MLFLOW = MlflowConfig(experiment_name="register-test")


@pytest.mark.parametrize(
    "value, minimum, champion, promote, reason",
    [
        (0.8, 0.5, None, True, "no champion yet"),
        (0.4, 0.5, None, False, "below register.min_accuracy 0.5000"),
        (0.5, 0.5, None, True, "no champion yet"),  # the bound is inclusive
        (0.6, 0.5, ("1", 0.7), False, "worse than champion v1's 0.7000"),
        (0.7, 0.5, ("1", 0.7), True, ">= champion v1's 0.7000"),  # not worse: ties promote
        (0.9, 0.5, ("2", 0.7), True, ">= champion v2's 0.7000"),
        (0.6, 0.5, ("3", None), True, ">= champion v3's 0.0000"),  # unknown champion value counts as 0
        (math.nan, 0.0, None, False, "below register.min_accuracy"),
    ],
)
def test_gate(value, minimum, champion, promote, reason):
    decision = reg.decide("video_accuracy", value, minimum, champion)
    assert decision.promote is promote
    assert reason in decision.reason


@pytest.fixture
def tracked_model(model_root, store, tmp_path):
    """A private copy of the tiny model, trained "with tracking" (its run file points at ``store``)."""
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    tracking.track_training(str(model_dir), TINY_PARAMS, records_dir=str(model_root / "records"), config=MLFLOW)
    return model_dir


def write_metrics(path, model_root, video_accuracy):
    metrics = json.loads((model_root / "reports" / "metrics.json").read_text())
    path.write_text(json.dumps({**metrics, "video_accuracy": video_accuracy}))
    return str(path)


def registration(model_dir, tmp_path, model_root, accuracy, minimum=0.5, name="vidseq-cnn-lstm"):
    metrics = write_metrics(tmp_path / f"metrics-{accuracy}.json", model_root, accuracy)
    cfg = RegisterConfig(model_name=name, min_accuracy=minimum)
    output = tmp_path / "reports" / "registry.json"
    record = reg.register(str(model_dir), metrics, str(output), register_cfg=cfg, mlflow_cfg=MLFLOW, params=TINY_PARAMS)
    assert json.loads(output.read_text()) == record
    return record


def aliases(name):
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_the_gate_moves_champion_only_to_a_version_not_worse(tracked_model, model_root, tmp_path, store):
    first = registration(tracked_model, tmp_path, model_root, 0.6)
    assert (first["version"], first["decision"], first["aliases"]) == (1, "promoted", ["challenger", "champion"])
    assert first["previous_champion"] is None and first["champion"] == {"version": 1, "video_accuracy": 0.6}
    assert first["run_id"] == json.loads((tracked_model / tracking.RUN_FILE).read_text())["run_id"]
    assert first["model_uri"] == "models:/vidseq-cnn-lstm/1" and first["tracking_uri"] == store

    worse = registration(tracked_model, tmp_path, model_root, 0.55)
    assert (worse["version"], worse["decision"], worse["aliases"]) == (2, "rejected", ["challenger"])
    assert "worse than champion v1's 0.6000" in worse["reason"]
    assert aliases("vidseq-cnn-lstm") == {"champion": 1, "challenger": 2}

    better = registration(tracked_model, tmp_path, model_root, 0.9)
    assert (better["version"], better["decision"]) == (3, "promoted")
    assert better["previous_champion"] == {"version": 1, "video_accuracy": 0.6}
    assert aliases("vidseq-cnn-lstm") == {"champion": 3, "challenger": 3}

    client = mlflow.MlflowClient()
    assert [int(v.version) for v in client.search_model_versions("name='vidseq-cnn-lstm'")] == [3, 2, 1]
    tags = client.get_model_version("vidseq-cnn-lstm", "2").tags
    assert tags["vidseq.decision"] == "rejected" and "worse than champion" in tags["vidseq.reason"]
    assert json.loads(tags["vidseq.registry"])["version"] == 2 and tags["vidseq.video_accuracy"] == "0.55"
    run = client.get_run(first["run_id"])  # one run: train's, continued by every registration
    assert run.data.tags["vidseq.registered_version"] == "3" and run.data.tags["vidseq.decision"] == "promoted"
    logged = mlflow.artifacts.load_dict(f"runs:/{first['run_id']}/registry.json")
    assert logged["version"] == 3 and logged["min_accuracy"] == 0.5
    assert set(model_logging.logged_model_names(first["run_id"])) == {"keras_model", "video_classifier"}
    assert client.get_model_version("vidseq-cnn-lstm", "3").run_id == first["run_id"]


def test_below_the_minimum_is_registered_but_never_champion(tracked_model, model_root, tmp_path):
    record = registration(tracked_model, tmp_path, model_root, 0.3, minimum=0.5, name="gate-min")
    assert (record["version"], record["decision"], record["aliases"]) == (1, "rejected", ["challenger"])
    assert record["champion"] is None and "below register.min_accuracy 0.5000" in record["reason"]
    assert aliases("gate-min") == {"challenger": 1}


def test_an_untracked_model_gets_a_backfilled_run(model_root, store, tmp_path):
    model_dir = copy_model_dir(model_root, tmp_path / "untracked")
    before = sorted(p.name for p in model_dir.iterdir())
    record = registration(model_dir, tmp_path, model_root, 0.7, name="backfilled")
    assert sorted(p.name for p in model_dir.iterdir()) == before  # train's DVC output is never written to
    run = mlflow.MlflowClient().get_run(record["run_id"])
    assert run.data.tags["vidseq.backfilled"] == "true"
    assert run.data.tags["vidseq.records.dvc_md5"].endswith(".dir")  # data.records_dir of the params
    assert run.data.metrics["test_video_accuracy"] == 0.7 and "val_loss" in run.data.metrics
    assert run.data.params["model.rnn_units"] == "8"
    assert set(model_logging.logged_model_names(record["run_id"])) == {"keras_model", "video_classifier"}


def test_cli_writes_the_record_and_prints_the_decision(tracked_model, model_root, tmp_path, capsys):
    params = {**TINY_PARAMS, "register": {"model_name": "cli-model", "min_accuracy": 0.0}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = write_metrics(tmp_path / "metrics.json", model_root, 0.25)
    output = tmp_path / "out" / "registry.json"
    argv = ["--model", str(tracked_model), "--metrics", metrics, "--output", str(output),
            "--params", str(tmp_path / "params.yaml")]  # fmt: skip
    assert reg.main(argv) == 0
    assert "cli-model v1 (@challenger, @champion): promoted" in capsys.readouterr().out
    assert json.loads(output.read_text())["decision"] == "promoted"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"register": {"model_nam": "x"}}, "unknown key register.model_nam"),
        ({"register": {"min_accuracy": 1.5}}, "register.min_accuracy must be in [0, 1]"),
        ({"register": {"model_name": "a/b"}}, "register.model_name must be"),
        ({"register": {"metric": "no_such_metric"}}, "has no 'no_such_metric' (register.metric)"),
        ({"mlflow": {"experiment": "x"}}, "unknown key mlflow.experiment"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tracked_model, model_root, tmp_path, capsys, change, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS, **change}))
    metrics = str(model_root / "reports" / "metrics.json")
    argv = ["--model", str(tracked_model), "--metrics", metrics, "--output", str(tmp_path / "r.json"),
            "--params", str(tmp_path / "params.yaml")]  # fmt: skip
    assert reg.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_model_folder_is_one_line_and_exit_2(tmp_path, capsys, store):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    assert reg.main(["--model", str(tmp_path / "nope"), "--params", str(tmp_path / "params.yaml")]) == 2
    assert "model folder" in capsys.readouterr().err


def test_repo_params_yaml_register_and_mlflow_sections_are_the_defaults():
    from orchestration_fixtures import REPO

    from pipeline.config import load_section

    params = str(REPO / "params.yaml")
    assert load_section(RegisterConfig, params, "register") == RegisterConfig()
    assert load_section(MlflowConfig, params, "mlflow") == MlflowConfig()
    assert RegisterConfig().champion_uri == "models:/vidseq-cnn-lstm@champion"
