"""Shared fixtures for the orchestration tests: a tiny trained model, a DVC-run copy of the repository.

Both are built once per test session (a ``.done`` marker under pytest's base temp folder) and
shared by the modules that need them, so the tracking, register, predict and serving tests
reuse one tiny model and the DVC and MLflow-server tests reuse one ``dvc repro``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# 12 demo videos (2 per class, one group each); salt s1 puts 3 groups in train, 1 in val, 2 in test.
TINY_PARAMS = {
    "data": {"raw_dir": "data/demo", "records_dir": "data/records", "synth_videos_per_class": 2, "synth_seed": 0},
    "preprocess": {
        "sequence_length": 4, "height": 32, "width": 32, "clips_per_video": 2,
        "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_salt": "s1",
    },
    "model": {"conv_filters": [4, 8], "frame_features": 16, "rnn_units": 8, "batch_norm": False, "dropout": 0.0,
              "backbone_file": "backbones"},  # dvc.yaml names ${model.backbone_file} (a dependency of train)
    "train": {"epochs": 1, "batch_size": 8, "cache": False},
    "evaluate": {"batch_size": 8},
    "mlflow": {"experiment_name": "vidseq-test"},
    "register": {"model_name": "vidseq-cnn-lstm", "min_accuracy": 0.0},
}  # fmt: skip


def write_params(path: Path, params: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump(params or TINY_PARAMS, sort_keys=False))
    return path


def tool_env(tracking_uri: str) -> dict[str, str]:
    """The environment of a stage: the venv's tools first on PATH, a private MLflow store."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_TRACKING_URI": tracking_uri,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "GIT_AUTHOR_NAME": "vidseq tests", "GIT_AUTHOR_EMAIL": "tests@vidseq.invalid",
        "GIT_COMMITTER_NAME": "vidseq tests", "GIT_COMMITTER_EMAIL": "tests@vidseq.invalid",
    }  # fmt: skip


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs a command; raises with its output if it fails."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return done


@contextlib.contextmanager
def running_server(args: list[str], port: int, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Runs a server (``mlflow server``, ``mlflow models serve``) in its own process group.

    Waits until ``port`` accepts; on exit stops the whole group (the CLI and its uvicorn
    worker), by the group id of the process started here.
    """
    from servers import wait_for_port

    with open(log, "wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            wait_for_port(port, process, timeout=120)
            yield process
        finally:
            for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue


@contextlib.contextmanager
def read_only(store: str) -> Iterator[list[str]]:
    """A command prefix that runs a command with the folder ``store`` really read-only (even for root).

    Root ignores permission bits, so the store becomes a read-only bind mount in a private mount
    namespace (``unshare -m``), or else its files are made immutable (``chattr +i``) while the
    context lasts; if neither is possible the test fails. The prefix exits 97 if the mount fails
    and 98 if a write into ``store`` still succeeds, before running the command.
    """
    import pytest

    probe = f'touch "{store}/write-probe" 2>/dev/null && exit 98'
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:
        mount = f'mount --bind "{store}" "{store}" && mount -o remount,bind,ro "{store}" "{store}" || exit 97'
        yield ["unshare", "-m", "sh", "-c", f'{mount}\n{probe}\nexec "$@"', "sh"]
        return
    if subprocess.run(["chattr", "-R", "+i", store], capture_output=True).returncode != 0:
        pytest.fail("cannot make the store read-only: neither unshare -m (mount namespace) nor chattr +i works")
    try:
        yield ["sh", "-c", probe + '\nexec "$@"', "sh"]
    finally:
        subprocess.run(["chattr", "-R", "-i", store], check=True)


def build_once(base: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``base/name``, built by ``build`` the first time in this session."""
    folder = base / name
    if (folder / ".done").exists():
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    build(folder)
    (folder / ".done").touch()
    return folder


# --------------------------------------------------------------------------- a tiny trained model


def _build_model(folder: Path) -> None:
    from vidseq.params import PreprocessConfig
    from vidseq.validation import from_mapping
    from pipeline.synth import write_dataset
    from vidseq.params import EvaluateConfig, ModelConfig, TrainConfig
    from training.fit import train
    from training.metrics import evaluate

    write_dataset(str(folder / "demo"), TINY_PARAMS["data"]["synth_videos_per_class"], 0, progress=False)
    params = write_params(folder / "params.yaml")
    from_mapping(PreprocessConfig, TINY_PARAMS["preprocess"], "preprocess")  # valid before the job
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    run([sys.executable, "-m", "pipeline", "--input", str(folder / "demo"), "--output", str(folder / "records"),
         "--params", str(params)], REPO, env)  # fmt: skip
    model_cfg = from_mapping(ModelConfig, TINY_PARAMS["model"], "model")
    train_cfg = from_mapping(TrainConfig, TINY_PARAMS["train"], "train")
    train(str(folder / "records"), str(folder / "models"), model_cfg, train_cfg)
    evaluate(str(folder / "records"), str(folder / "models"), str(folder / "reports"), EvaluateConfig(batch_size=8))


def tiny_model(tmp_path_factory) -> Path:
    """A folder with ``demo/`` videos, ``records/``, ``models/`` (untracked) and ``reports/``."""
    return build_once(tmp_path_factory.getbasetemp(), "orchestration-model", _build_model)


def copy_model_dir(model_root: Path, destination: Path) -> Path:
    """A private copy of the tiny model's ``models/`` (tests that write a run file into it)."""
    shutil.copytree(model_root / "models", destination)
    return destination


# --------------------------------------------------------------------------- a DVC-run copy of the repo


def copy_repository(destination: Path) -> None:
    """Copies the files git would commit (tracked + untracked, not ignored) into ``destination``."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def _build_repo(folder: Path) -> None:
    repo = folder / "repo"
    repo.mkdir()
    copy_repository(repo)
    write_params(repo / "params.yaml")
    env = tool_env(f"sqlite:///{folder / 'mlflow.db'}")
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "vidseq copy"], repo, env)
    run(["dvc", "repro"], repo, env, timeout=600)
    run(["git", "add", "dvc.lock", "data/dvc.lock"], repo, env)
    run(["git", "commit", "-qm", "first pipeline run"], repo, env)


def pipeline_repo(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """``(repo, env)``: a committed copy of the repository after one ``dvc repro`` on tiny params.

    ``env`` points ``MLFLOW_TRACKING_URI`` at the copy's own store (``../mlflow.db``).
    """
    folder = build_once(tmp_path_factory.getbasetemp(), "orchestration-repo", _build_repo)
    return folder / "repo", tool_env(f"sqlite:///{folder / 'mlflow.db'}")


def copy_pipeline_repo(tmp_path_factory, destination: Path) -> Path:
    """A private copy of :func:`pipeline_repo`'s repository (git, DVC cache, outputs) for a test that changes it.

    DVC's temporary folder (``.dvc/tmp``: locks, the experiments queue) is left out.
    """
    source, _ = pipeline_repo(tmp_path_factory)

    def skip(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == source / ".dvc" else []

    shutil.copytree(source, destination, symlinks=True, ignore=skip)
    return destination


def use_store(monkeypatch, folder: Path) -> str:
    """Points ``MLFLOW_TRACKING_URI`` at a sqlite store in ``folder``; returns the URI."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def register_champion(model_root: Path, folder: Path, experiment: str) -> str:
    """Registers a copy of the tiny model as ``vidseq-cnn-lstm@champion`` in a store in ``folder``; returns its URI."""
    import pytest

    from training.tracking import registry
    from vidseq.params import MlflowConfig, Params, RegisterConfig

    with pytest.MonkeyPatch.context() as patch:
        uri = use_store(patch, folder)
        model_dir = copy_model_dir(model_root, folder / "models")
        registry.register(
            str(model_dir), str(model_root / "reports" / "metrics.json"), str(folder / "registry.json"),
            register_cfg=RegisterConfig(min_accuracy=0.0), mlflow_cfg=MlflowConfig(experiment),
            params=Params.from_dict(TINY_PARAMS),
        )  # fmt: skip
    return uri
