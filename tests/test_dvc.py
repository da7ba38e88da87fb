"""Tests of dvc.yaml on a committed copy of the repository with tiny params (dvc from the venv).

The copy is built once per session (``orchestration_fixtures.pipeline_repo``: one ``dvc repro``);
the tests below run in file order and each leaves the copy committed and reproduced.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest
import yaml
from orchestration_fixtures import BIN, copy_pipeline_repo, pipeline_repo, run, tool_env

SYNTH = "data/dvc.yaml:synth"  # the demo's stage, in its own dvc.yaml
STAGES = ["listing", "preprocess", "train", "evaluate", "register"]  # dvc.yaml's, in order
DVC = str(BIN / "dvc")


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return pipeline_repo(tmp_path_factory)


def dvc(repo, *args, timeout=600):
    path, env = repo
    done = run([DVC, *args], path, env, timeout=timeout)
    return done.stdout + done.stderr


def ran(output):
    return re.findall(r"Running stage '([^']+)'", output)


def up_to_date(status):
    """``dvc status`` says nothing but that the listing stage always runs (it looks at the videos every time)."""
    return status.split() == ["listing:", "always", "changed"]


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
    assert list(yaml.safe_load((path / "data" / "dvc.lock").read_text())["stages"]) == ["synth"]
    for name in ("data/demo", "data/listing.json", "data/records/dataset.json", "models/model.keras",
                 "reports/metrics.json"):  # fmt: skip
        assert (path / name).exists(), name
    assert registry(repo)["version"] == 1 and "champion" in registry(repo)["aliases"]

    output = dvc(repo, "repro")
    assert ran(output) == ["listing"]  # it looks at the videos; they did not change, so nothing else runs
    assert "Stage 'preprocess' didn't change, skipping" in output
    assert up_to_date(dvc(repo, "status"))


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
    assert up_to_date(dvc(repo, "status"))


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
    assert ran(output) == ["listing", "train", "evaluate", "register"]
    assert "Stage 'preprocess' didn't change" in output
    assert registry(repo)["version"] == 2  # register re-ran with the new model: a new version
    diff = dvc(repo, "metrics", "diff", "HEAD", "--all", "--json")  # HEAD's metrics come from the DVC cache
    changes = json.loads(diff)["reports/metrics.json"]
    assert {"video_accuracy", "majority_baseline", "video_accuracy_ci_low", "video_balanced_accuracy"} <= set(changes)
    assert changes["majority_baseline"]["diff"] == 0  # the same test videos: the same baseline
    assert changes["majority_class"]["old"] == changes["majority_class"]["new"]  # a string: shown, not subtracted
    commit(repo, "batch size 4")
    assert ran(dvc(repo, "repro")) == ["listing"]


def test_exp_run_sets_a_parameter_and_exp_show_lists_it(repo):
    output = dvc(repo, "exp", "run", "-S", "train.epochs=2")
    assert ran(output) == ["listing", "train", "evaluate", "register"]
    name = re.search(r"Ran experiment\(s\): (\S+)", output).group(1)
    assert name in dvc(repo, "exp", "show", "--csv")
    shown = json.loads(dvc(repo, "exp", "show", "--json"))
    revs = [rev for commit in shown for e in commit.get("experiments") or [] for rev in e["revs"]]
    (exp,) = [rev for rev in revs if rev["name"] == name]
    assert exp["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 2
    assert "video_accuracy" in exp["data"]["metrics"]["reports/metrics.json"]["data"]
    commit(repo, "epochs 2")


# What a successful run must not print (issue 11): each looked like a failure on a healthy run.
NOISE = (
    "failed call to cuInit", "apitools not found", "requested in with_outputs() but not declared",
    "No shards found to finalize", "0 failed, see", "CloudPickle", "An input example was not provided",
    "Downloading artifacts", "Traceback", "absl::InitializeLog()", "oneDNN custom operations",
    "Could not find cuda drivers", "━━━",  # the last: a Keras progress bar (MLflow checking the input example)
)  # fmt: skip


def test_a_fresh_clone_reproduces_dvc_lock_and_metrics_exactly_and_prints_no_noise(repo, tmp_path_factory, tmp_path):
    path = copy_pipeline_repo(tmp_path_factory, tmp_path / "clone")  # another folder, as a clone is
    for name in (".dvc/cache", "data/demo", "data/records", "data/records.cache", "models", "reports", "dvc_plots"):
        shutil.rmtree(path / name, ignore_errors=True)  # only what git holds, as after git clone (no reuse cache)
    env = {k: v for k, v in tool_env(f"sqlite:///{tmp_path / 'mlflow.db'}").items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = run([DVC, "repro"], path, env, timeout=600)  # a user's first run: a new store, nothing cached
    assert ran(done.stdout) == [SYNTH, *STAGES]
    lines = (done.stdout + done.stderr).splitlines()
    assert [x for x in lines if any(n in x for n in NOISE)] == []
    assert run(["git", "status", "--porcelain"], path, env).stdout == ""  # dvc.lock: every hash as committed
    assert dvc((path, env), "metrics", "diff", "HEAD").strip() in ("", "No changes.")


OWN_CLASSES = {"Horizontal": ("MoveLeft", "MoveRight"), "Vertical": ("MoveUp", "MoveDown"), "Zoom": ("ZoomIn", "ZoomOut")}


def test_the_readme_own_videos_steps_keep_the_videos_through_exp_run_checkout_push_and_pull(tmp_path_factory, tmp_path):
    path = copy_pipeline_repo(tmp_path_factory, tmp_path / "repo")  # private: the other modules keep the demo's
    env = tool_env(f"sqlite:///{tmp_path / 'mlflow.db'}")  # a user's first store: no demo champion to mix with
    repo = (path, env)
    raw = path / "data" / "raw"
    for name, sources in OWN_CLASSES.items():  # the user's class folders: other classes than the demo's
        videos = sorted(v for source in sources for v in (path / "data" / "demo" / source).iterdir())
        for i, video in enumerate(videos):
            (raw / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(video, raw / name / f"v_{name}_g{i + 1:02d}_c01{video.suffix}")
    before = {p.relative_to(path): p.read_bytes() for p in raw.rglob("*") if p.is_file()}

    dvc(repo, "add", "data/raw")  # README step 2
    set_params(path, data__raw_dir="data/raw", register__model_name="my-videos")  # step 3
    run(["git", "add", "data/raw.dvc", "data/.gitignore", "params.yaml"], path, env)  # step 4
    run(["git", "commit", "-qm", "My videos"], path, env)
    assert run(["git", "status", "--porcelain"], path, env).stdout == ""  # nothing else to commit
    assert "data/raw.dvc" in dvc(repo, "stage", "list", "--all")  # DVC sees the .dvc file under data/

    output = dvc(repo, "repro")  # step 5
    assert ran(output) == STAGES
    record = registry(repo)
    assert (record["model_name"], record["version"], record["decision"]) == ("my-videos", 1, "promoted")
    assert record["classes"] == sorted(OWN_CLASSES)
    commit(repo, "pipeline on my videos")

    output = dvc(repo, "exp", "run", "-S", "train.epochs=3")  # step 6
    assert ran(output) == ["listing", "train", "evaluate", "register"] and "Ran experiment(s)" in output
    assert registry(repo)["model_name"] == "my-videos" and registry(repo)["version"] == 2
    dvc(repo, "checkout")
    after = {p.relative_to(path): p.read_bytes() for p in raw.rglob("*") if p.is_file()}
    assert after == before and (path / "data" / "records" / "dataset.json").exists()
    assert ran(dvc(repo, "repro", "--force", SYNTH)) == [SYNTH]  # the demo stage never touches them
    assert {p.relative_to(path): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before

    dvc(repo, "remote", "add", "-d", "shared", str(tmp_path / "remote"))  # sharing (README: dvc push)
    dvc(repo, "push")
    shutil.rmtree(raw)
    shutil.rmtree(path / ".dvc" / "cache")
    dvc(repo, "pull", "data/raw.dvc")
    assert {p.relative_to(path): p.read_bytes() for p in raw.rglob("*") if p.is_file()} == before


def test_a_manifest_video_changed_in_place_reruns_preprocess_and_the_demo_is_never_made(tmp_path_factory, tmp_path):
    path = copy_pipeline_repo(tmp_path_factory, tmp_path / "repo")
    env = tool_env(f"sqlite:///{tmp_path / 'mlflow.db'}")
    repo = (path, env)
    mine = path / "data" / "mine"
    rows = ["path,label"]
    for video in sorted((path / "data" / "demo").rglob("*.*")):  # the demo's videos, listed by a manifest
        (mine / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copy(video, mine / "videos" / video.name)
        rows.append(f"videos/{video.name},{video.parent.name}")
    (mine / "manifest.csv").write_text("\n".join(rows) + "\n")
    set_params(path, data__raw_dir="data/mine/manifest.csv")
    shutil.rmtree(path / "data" / "demo")  # were synth upstream of anything, dvc repro would make it again
    commit(repo, "a manifest of my videos")

    output = dvc(repo, "repro", "preprocess")  # preprocess and every stage upstream of it
    assert ran(output) == ["listing", "preprocess"] and SYNTH not in output
    assert not (path / "data" / "demo").exists()
    listed = json.loads((path / "data" / "listing.json").read_text())
    assert listed["input"] == "data/mine/manifest.csv" and len(listed["videos"]) == len(rows) - 1
    commit(repo, "records of the manifest")

    assert ran(dvc(repo, "repro", "preprocess")) == ["listing"]  # nothing changed
    video = mine / "videos" / listed["videos"][0]["video"].split("/")[-1]
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: same bytes
    output = dvc(repo, "repro", "preprocess")
    assert ran(output) == ["listing"] and "Stage 'preprocess' didn't change" in output

    other = next(p for p in sorted(video.parent.iterdir()) if p != video and p.name.split("_")[1] == video.name.split("_")[1])
    shutil.copy(other, video)  # rewritten in place, same class; the manifest CSV is unchanged
    assert run(["git", "status", "--porcelain"], path, env).stdout.split() == ["M", f"data/mine/videos/{video.name}"]
    assert ran(dvc(repo, "repro", "preprocess")) == ["listing", "preprocess"]
    assert "train:" in dvc(repo, "status", "train")  # new records: training is out of date
    # DVC removed the records before the stage ran; the reuse cache beside them outlived that: the
    # rewritten video now holds another listed video's bytes, so every clip comes from the cache
    decode = json.loads((path / "data" / "records" / "dataset.json").read_text())["decode"]
    assert decode["videos_reused"] == len(rows) - 1


OFFLINE_PLOTS = ("models/training_curves.png", "reports/confusion_matrix.png")


def test_the_image_plots_page_needs_no_network(repo, tmp_path):
    path, env = repo
    dvc(repo, "plots", "show", *OFFLINE_PLOTS, "-o", str(tmp_path / "plots"))  # README: dvc plots show, offline
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # nothing to fetch
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == len(OFFLINE_PLOTS) and all((tmp_path / "plots" / i).read_bytes()[:4] == b"\x89PNG" for i in images)

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium to render the page with")
    shot = tmp_path / "shot.png"
    run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--proxy-server=127.0.0.1:9",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--screenshot={shot}", "--window-size=1000,900",
         (tmp_path / "plots" / "index.html").as_uri()], tmp_path, env, timeout=120)  # fmt: skip
    from PIL import Image

    dark = sum(Image.open(shot).convert("L").histogram()[:128])
    assert dark > 2000  # axes, labels and curves drawn, not a blank page


def test_the_backbone_file_is_a_dependency_of_train(tmp_path):
    """``model.backbone_file`` resolves into train's deps: the backbones folder by default, else the file named."""
    import os
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(os.path.join(root, name), tmp_path / name)
    shutil.copytree(os.path.join(root, "backbones"), tmp_path / "backbones")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)

    def train_deps():  # in a fresh interpreter: DVC keeps what it parsed for the life of a process
        script = (
            "import json\nfrom dvc.repo import Repo\nwith Repo('.') as repo:\n"
            "    (stage,) = repo.stage.collect('train')\n    print(json.dumps([d.def_path for d in stage.deps]))"
        )
        done = subprocess.run([str(BIN / "python"), "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return set(json.loads(done.stdout.strip().splitlines()[-1]))

    assert "backbones" in train_deps()
    set_params(tmp_path, model__backbone="file", model__backbone_file="backbones/mine.keras")
    deps = train_deps()
    assert "backbones/mine.keras" in deps and "backbones" not in deps
