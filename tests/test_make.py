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
