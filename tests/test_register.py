"""Tests of training.register: versions, @challenger/@champion and the promotion gate."""

from __future__ import annotations

import json
import math
import threading

import mlflow
import pytest
import yaml
from orchestration_fixtures import TINY_PARAMS, copy_model_dir

from training import register as stage
from training.tracking import model_logging, runs
from training.tracking import registry as reg
from vidseq.params import MlflowConfig, Params, RegisterConfig

PARAMS = Params.from_dict(TINY_PARAMS)
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


@pytest.mark.parametrize(
    "version, champion, promote, reason",
    [
        (4, ("3", 0.7), True, ">= champion v3's 0.7000"),  # a tie goes to the newer version
        (4, ("5", 0.7), False, "ties the newer champion v5's 0.7000"),  # registered concurrently, later
        (4, ("5", 0.6), True, ">= champion v5's 0.6000"),
    ],
)
def test_gate_ties_go_to_the_newer_version(version, champion, promote, reason):
    decision = reg.decide("video_accuracy", 0.7, 0.5, champion, version=version)
    assert decision.promote is promote and reason in decision.reason


@pytest.fixture
def tracked_model(model_root, store, tmp_path):
    """A private copy of the tiny model, trained "with tracking" (its run file points at ``store``)."""
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    runs.track_training(str(model_dir), TINY_PARAMS, records_dir=str(model_root / "records"), config=MLFLOW)
    return model_dir


def write_metrics(path, model_root, video_accuracy):
    metrics = json.loads((model_root / "reports" / "metrics.json").read_text())
    path.write_text(json.dumps({**metrics, "video_accuracy": video_accuracy}))
    return str(path)


def registration(model_dir, tmp_path, model_root, accuracy, minimum=0.5, name="vidseq-cnn-lstm"):
    metrics = write_metrics(tmp_path / f"metrics-{accuracy}.json", model_root, accuracy)
    cfg = RegisterConfig(model_name=name, min_accuracy=minimum)
    output = tmp_path / "reports" / "registry.json"
    record = reg.register(str(model_dir), metrics, str(output), register_cfg=cfg, mlflow_cfg=MLFLOW, params=PARAMS)
    assert json.loads(output.read_text()) == record
    return record


def aliases(name):
    model = mlflow.MlflowClient().get_registered_model(name)
    return {alias: int(version) for alias, version in model.aliases.items()}


def test_the_gate_moves_champion_only_to_a_version_not_worse(tracked_model, model_root, tmp_path, store):
    first = registration(tracked_model, tmp_path, model_root, 0.6)
    assert (first["version"], first["decision"], first["aliases"]) == (1, "promoted", ["challenger", "champion"])
    assert first["previous_champion"] is None and first["champion"] == {"version": 1, "video_accuracy": 0.6}
    assert first["run_id"] == json.loads((tracked_model / runs.RUN_FILE).read_text())["run_id"]
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
    assert mlflow.artifacts.load_dict(tags["vidseq.record"])["version"] == 2 and tags["vidseq.video_accuracy"] == "0.55"
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
    assert stage.main(argv) == 0
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
    assert stage.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_model_folder_is_one_line_and_exit_2(tmp_path, capsys, store):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    assert stage.main(["--model", str(tmp_path / "nope"), "--params", str(tmp_path / "params.yaml")]) == 2
    assert "model folder" in capsys.readouterr().err


def test_the_default_champion_uri():  # params.yaml's sections equal the defaults: tests/test_params.py
    assert RegisterConfig().champion_uri == "models:/vidseq-cnn-lstm@champion"


# --------------------------------------------------------------------------- concurrent registrations


class Interleaving:
    """Holds chosen registrations between the gate's read and their first ``@champion`` write.

    ``hold(name)`` starts ``register`` in a thread that stops just before it writes the alias
    (its read is then stale for every version registered meanwhile); ``release(name)`` lets
    it write and finish. The order of releases decides who writes last.
    """

    def __init__(self, monkeypatch):
        self.gates: dict[str, tuple[threading.Event, threading.Event]] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.results: dict[str, dict] = {}
        self.go: dict[str, threading.Event] = {}
        write = mlflow.MlflowClient.set_registered_model_alias

        def held_write(client, name, alias, version):
            gate = self.gates.pop(threading.current_thread().name, None) if alias == "champion" else None
            if gate is not None:
                gate[0].set()  # read done, write pending
                assert gate[1].wait(120), "never released"
            return write(client, name, alias, version)

        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", held_write)

    def hold(self, name, register):
        arrived, self.go[name] = self.gates[name] = (threading.Event(), threading.Event())

        def target():
            try:
                self.results[name] = register()
            finally:
                arrived.set()  # also if it failed or ended without writing: hold() then says so

        self.threads[name] = thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        assert arrived.wait(120) and thread.is_alive(), f"{name} never reached its @champion write"

    def release(self, name):
        self.go[name].set()
        self.threads[name].join(120)
        assert not self.threads[name].is_alive() and name in self.results, f"{name} did not finish"
        return self.results[name]


def tracked_copy(model_root, tmp_path, label):
    model_dir = copy_model_dir(model_root, tmp_path / label)
    runs.track_training(str(model_dir), TINY_PARAMS, records_dir=str(model_root / "records"), config=MLFLOW)
    return model_dir


def concurrent_registration(model_root, tmp_path, label, accuracy, name):
    """A callable registering a private tracked copy of the tiny model; writes ``<label>/registry.json``."""
    model_dir = tracked_copy(model_root, tmp_path, f"models-{label}")
    metrics = write_metrics(tmp_path / f"metrics-{label}.json", model_root, accuracy)
    output = tmp_path / label / "registry.json"
    cfg = RegisterConfig(model_name=name, min_accuracy=0.5)

    def run():
        reg.register(str(model_dir), metrics, str(output), register_cfg=cfg, mlflow_cfg=MLFLOW, params=PARAMS)
        return json.loads(output.read_text())  # what registry.json says

    return run


def test_the_worse_of_two_concurrent_registrations_writing_last_does_not_win(model_root, tmp_path, store, monkeypatch):
    name = "race-two"
    race = Interleaving(monkeypatch)
    worse = concurrent_registration(model_root, tmp_path, "worse", 0.85, name)
    better = concurrent_registration(model_root, tmp_path, "better", 0.95, name)
    race.hold("worse", worse)  # read: no champion, only itself; about to make itself champion
    best = better()  # registers, promotes itself, finishes
    late = race.release("worse")  # now the stale write lands last

    assert aliases(name)["champion"] == best["version"] == 2  # the better version, though it wrote first
    assert (best["decision"], best["champion"]) == ("promoted", {"version": 2, "video_accuracy": 0.95})
    assert best["champion_writes"] == [2]
    assert (late["version"], late["decision"]) == (1, "rejected")  # not a stale "promoted"
    assert late["reason"] == "video_accuracy 0.8500 is worse than champion v2's 0.9500"
    assert late["champion"] == {"version": 2, "video_accuracy": 0.95} and "champion" not in late["aliases"]
    assert late["champion_writes"] == [1, 2]  # its stale write, then the repair
    tags = mlflow.MlflowClient().get_model_version(name, "1").tags
    assert tags["vidseq.decision"] == "rejected" and mlflow.artifacts.load_dict(tags["vidseq.record"]) == late


def test_three_concurrent_registrations_end_on_the_best(model_root, tmp_path, store, monkeypatch):
    name = "race-three"
    race = Interleaving(monkeypatch)
    worst = concurrent_registration(model_root, tmp_path, "worst", 0.85, name)
    middle = concurrent_registration(model_root, tmp_path, "middle", 0.90, name)
    best = concurrent_registration(model_root, tmp_path, "best", 0.95, name)
    low = concurrent_registration(model_root, tmp_path, "low", 0.40, name)  # below min_accuracy
    race.hold("worst", worst)  # v1: sees only itself
    race.hold("middle", middle)  # v2: sees v1 and itself, about to make itself champion
    winner = best()  # v3
    rejected = low()  # v4, never a candidate
    records = {"middle": race.release("middle"), "worst": race.release("worst")}  # the worst writes last

    assert aliases(name)["champion"] == 3
    assert (winner["decision"], winner["champion"]["version"]) == ("promoted", 3)
    for label, version, value in (("middle", 2, "0.9000"), ("worst", 1, "0.8500")):
        record = records[label]
        assert (record["version"], record["decision"], record["champion"]["version"]) == (version, "rejected", 3)
        assert record["reason"] == f"video_accuracy {value} is worse than champion v3's 0.9500"
        assert record["champion_writes"] == [version, 3]
    assert (rejected["decision"], rejected["champion"]["version"]) == ("rejected", 3)
    assert "below register.min_accuracy 0.5000" in rejected["reason"] and rejected["champion_writes"] == []


def test_a_version_trained_on_other_classes_is_never_compared_with_the_champion(
    tracked_model, model_root, tmp_path, store
):
    demo = registration(tracked_model, tmp_path, model_root, 0.6, name="one-dataset")
    classes = json.loads((tracked_model / "dataset.json").read_text())["classes"]
    assert demo["classes"] == classes and demo["decision"] == "promoted"
    registered = json.loads((tmp_path / "reports" / "registered.json").read_text())  # register's DVC output
    assert registered == {"model_name": "one-dataset", "classes": classes, "metric": "video_accuracy", "value": 0.6,
                          "min_accuracy": 0.5}  # fmt: skip

    other = copy_model_dir(model_root, tmp_path / "other-dataset")  # same shapes, other class names
    spec = json.loads((other / "dataset.json").read_text())
    spec["classes"] = [f"Sign{i}" for i in range(len(spec["classes"]))]
    (other / "dataset.json").write_text(json.dumps(spec))
    runs.track_training(str(other), TINY_PARAMS, records_dir=str(model_root / "records"), config=MLFLOW)
    mixed = registration(other, tmp_path, model_root, 0.9, name="one-dataset")
    assert (mixed["version"], mixed["decision"], mixed["aliases"]) == (2, "rejected", ["challenger"])
    assert "not compared: champion v1 was trained on 6 classes" in mixed["reason"]
    assert "Sign0" in mixed["reason"] and "register.model_name" in mixed["reason"]
    assert aliases("one-dataset") == {"champion": 1, "challenger": 2}
    tags = mlflow.MlflowClient().get_model_version("one-dataset", "2").tags
    assert json.loads(tags["vidseq.classes"])[0] == "Sign0"

    # v2 passed the minimum with 0.9, but only versions of the champion's classes compete
    again = registration(tracked_model, tmp_path, model_root, 0.7, name="one-dataset")
    assert (again["version"], again["decision"]) == (3, "promoted")
    assert aliases("one-dataset") == {"champion": 3, "challenger": 3}


def test_the_gate_refuses_other_classes():
    decision = reg.decide("video_accuracy", 0.9, 0.5, ("1", 0.6), classes=["a", "b"], champion_classes=["x", "y"])
    assert not decision.promote and "champion v1 was trained on 2 classes (x, y)" in decision.reason
    same = reg.decide("video_accuracy", 0.9, 0.5, ("1", 0.6), classes=["a", "b"], champion_classes=["a", "b"])
    assert same.promote
    assert reg.decide("video_accuracy", 0.9, 0.5, ("1", 0.6), classes=["a"], champion_classes=None).promote  # untagged
