"""Tests of tools/smoke.py, the smoke path `make check-latest` runs: the real commands on tiny data, on the locked set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_smoke_path_runs_every_command_and_leaves_everything_in_its_folder(tmp_path):
    work = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run([sys.executable, str(REPO / "tools" / "smoke.py"), str(work)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for step in ("synth", "preprocess", "train", "evaluate", "register", "predict"):
        assert f"smoke: {step} passed" in done.stdout
    prediction = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    assert prediction["label"] in json.loads((work / "records" / "dataset.json").read_text())["classes"]
    assert (work / "mlflow.db").is_file() and (work / "reports" / "metrics.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]


def test_a_failing_command_stops_the_path_with_a_line_naming_it(tmp_path):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "videos").write_text("a file where synth wants a folder")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "smoke.py"), str(tmp_path / "smoke")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 1
    assert "error: smoke path failed at synth" in done.stdout
    assert "smoke: preprocess" not in done.stdout
