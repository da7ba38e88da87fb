"""Tests of the Makefile's clean targets: `make clean` keeps the MLflow store and the user's videos, `make clean-all` does not keep the store."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = ("data/records/dataset.json", "data/demo/a.mp4", "models/model.keras", "reports/metrics.json",
           "dvc_plots/index.html")  # fmt: skip
STORE = ("mlflow.db", "mlruns/1/meta.yaml")
VIDEOS = ("data/raw/Wave/v_Wave_g01_c01.mp4",)


def folder_with_everything(tmp_path: Path) -> Path:
    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    for name in (*OUTPUTS, *STORE, *VIDEOS):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


def make(folder: Path, target: str) -> None:
    subprocess.run(["make", "-s", target], cwd=folder, check=True, capture_output=True, timeout=60)


def test_clean_removes_the_outputs_and_keeps_the_store_and_the_videos(tmp_path):
    folder = folder_with_everything(tmp_path)
    make(folder, "clean")
    assert [name for name in OUTPUTS if (folder / name).exists()] == []
    assert all((folder / name).exists() for name in (*STORE, *VIDEOS))


def test_clean_all_also_removes_the_store_but_never_the_videos(tmp_path):
    folder = folder_with_everything(tmp_path)
    make(folder, "clean-all")
    assert [name for name in (*OUTPUTS, *STORE) if (folder / name).exists()] == []
    assert all((folder / name).exists() for name in VIDEOS)


def folder_with_a_venv(tmp_path: Path, *, own_code: bool) -> Path:
    """A Makefile, a ``vidseq`` package and a ``.venv`` whose python is this suite's (its ``vidseq`` is this
    repository's), or with ``own_code`` one that imports the folder's ``vidseq``."""
    import sys

    shutil.copy(REPO / "Makefile", tmp_path / "Makefile")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    path = f"PYTHONPATH={tmp_path} " if own_code else ""
    python.write_text(f'#!/bin/sh\n{path}exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    (tmp_path / "vidseq").mkdir()  # the folder holds the project's code either way, as a repository does
    (tmp_path / "vidseq" / "__init__.py").write_text("")
    return tmp_path


def test_a_venv_made_for_another_folder_is_made_again(tmp_path):
    folder = folder_with_a_venv(tmp_path, own_code=False)  # its editable vidseq is this repository's: a copy
    done = subprocess.run(["make", "-s", "venv-here"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ".venv was made for another folder (the repository moved or was copied): making it again"
    assert not (folder / ".venv").exists()


def test_the_folders_own_venv_and_no_venv_are_left_alone(tmp_path):
    (tmp_path / "own").mkdir()
    folder = folder_with_a_venv(tmp_path / "own", own_code=True)
    done = subprocess.run(["make", "-s", "venv-here"], cwd=folder, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr
    assert (folder / ".venv" / "bin" / "python").exists()
    (tmp_path / "none").mkdir()
    shutil.copy(REPO / "Makefile", tmp_path / "none" / "Makefile")
    done = subprocess.run(["make", "-s", "venv-here"], cwd=tmp_path / "none", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "" and not (tmp_path / "none" / ".venv").exists()
