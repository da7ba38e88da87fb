"""Tests of dvc.yaml on a committed copy of the repository with tiny params (dvc from the venv).

The copy is built once per session (``orchestration_fixtures.pipeline_repo``: one ``dvc repro``);
the tests below run in file order and each leaves the copy committed and reproduced.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from orchestration_fixtures import BIN, pipeline_repo, run

STAGES = ["synth", "preprocess", "train", "evaluate", "register"]
DVC = str(BIN / "dvc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return pipeline_repo(tmp_path_factory)


def dvc(repo, *args, timeout=600):
    path, env = repo
    done = run([DVC, *args], path, env, timeout=timeout)
    return done.stdout + done.stderr


def ran(output):
    return re.findall(r"Running stage '(\w+)'", output)


def set_params(path, **changes):
    params = yaml.safe_load((path / "params.yaml").read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        params[section][name] = value
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo, message):
    path, env = repo
    run(["git", "add", "-A"], path, env)
    run(["git", "commit", "-qm", message], path, env)


def registry(repo):
    return json.loads((repo[0] / "reports" / "registry.json").read_text())


def test_repro_ran_every_stage_and_a_second_repro_does_nothing(repo):
    path, _ = repo
    lock = yaml.safe_load((path / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    for name in ("data/demo", "data/records/dataset.json", "models/model.keras", "reports/metrics.json"):
        assert (path / name).exists(), name
    assert registry(repo)["version"] == 1 and "champion" in registry(repo)["aliases"]

    output = dvc(repo, "repro")
    assert ran(output) == []
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def test_stages_rerun_only_for_the_code_they_run(repo):
    path, _ = repo
    stages = ("train", "evaluate", "register")
    originals = {}
    for tool in ("pipeline/inspect.py", "training/summary.py"):  # tools that no training stage runs
        originals[tool] = (path / tool).read_text()
        (path / tool).write_text(originals[tool] + "# an edit to a tool\n")
    assert "Data and pipelines are up to date" in dvc(repo, "status", *stages)

    originals["training/model.py"] = (path / "training/model.py").read_text()
    (path / "training/model.py").write_text(originals["training/model.py"] + "# an edit to the model\n")
    status = dvc(repo, "status", *stages)
    assert "train:" in status and "training/model.py" in status

    for name, text in originals.items():
        (path / name).write_text(text)
    assert "Data and pipelines are up to date" in dvc(repo, "status")


def test_metrics_and_plots_are_declared(repo):
    metrics = json.loads(dvc(repo, "metrics", "show", "--json"))
    values = next(iter(metrics.values()))["data"]["reports/metrics.json"]["data"]
    assert {"video_accuracy", "accuracy", "shuffled_accuracy"} <= set(values)
    assert "video_accuracy" in dvc(repo, "metrics", "show")
    plots = json.loads(dvc(repo, "plots", "show", "--json"))["data"]
    assert {"Loss", "Accuracy", "reports/predictions.csv"} <= set(plots)
    assert "actual" in json.dumps(plots["reports/predictions.csv"])  # the confusion template's axes


def test_a_train_parameter_reruns_train_evaluate_register_but_not_preprocessing(repo):
    path, _ = repo
    set_params(path, train__batch_size=4)
    assert "train" in dvc(repo, "status")
    output = dvc(repo, "repro")
    assert ran(output) == ["train", "evaluate", "register"]
    assert "Stage 'preprocess' didn't change" in output
    assert registry(repo)["version"] == 2  # register re-ran with the new model: a new version
    assert "Path" in dvc(repo, "metrics", "diff", "HEAD")  # HEAD's metrics come from the DVC cache
    commit(repo, "batch size 4")
    assert ran(dvc(repo, "repro")) == []


def test_exp_run_sets_a_parameter_and_exp_show_lists_it(repo):
    output = dvc(repo, "exp", "run", "-S", "train.epochs=2")
    assert ran(output) == ["train", "evaluate", "register"]
    name = re.search(r"Ran experiment\(s\): (\S+)", output).group(1)
    assert name in dvc(repo, "exp", "show", "--csv")
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    revs = [rev for commit in shown for e in commit.get("experiments") or [] for rev in e["revs"]]
    (exp,) = [rev for rev in revs if rev["name"] == name]
    assert exp["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert "video_accuracy" in exp["data"]["metrics"]["reports/metrics.json"]["data"]
    commit(repo, "epochs 2")


def test_own_videos_take_two_steps_and_synth_never_touches_them(repo):
    path, _ = repo
    shutil.copytree(path / "data" / "demo", path / "data" / "raw")  # stand-in for the user's videos
    before = {p.relative_to(path): p.read_bytes() for p in (path / "data" / "raw").rglob("*") if p.is_file()}
    dvc(repo, "add", "data/raw")  # step 1
    set_params(path, data__raw_dir="data/raw")  # step 2
    dry = dvc(repo, "repro", "--dry")
    assert ran(dry)[:1] == ["preprocess"] and "synth" not in ran(dry)  # the rest follows if the records change
    assert "python -m pipeline --input data/raw --output data/records" in dry
    assert ran(dvc(repo, "repro", "--force", "synth")) == ["synth"]
    after = {p.relative_to(path): p.read_bytes() for p in (path / "data" / "raw").rglob("*") if p.is_file()}
    assert after == before
