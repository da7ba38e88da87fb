"""Tests of the harness's quieting (vidseq.cli.quiet_libraries): healthy runs print nothing that looks like an error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

from vidseq import cli

REPO = Path(__file__).resolve().parents[1]


def test_mlflow_notes_are_dropped_and_other_records_kept(caplog):
    cli.quiet_libraries()
    logger = logging.getLogger("mlflow.pyfunc")
    with caplog.at_level(logging.INFO, logger="mlflow.pyfunc"):
        logger.warning("Passing a Python object as `python_model` causes it to be serialized using CloudPickle")
        logger.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        cli.quiet_libraries()  # after simplefilter: its filter goes in front again
        warnings.warn("\x1b[1;33mAn input example was not provided when logging the model.", UserWarning)
        warnings.warn("something else", UserWarning)
    assert [str(w.message) for w in seen] == ["something else"]
    assert logging.getLogger("apache_beam.io.filebasedsink").level == logging.ERROR


def test_a_tensorflow_start_on_cpu_prints_no_cuinit_error_and_the_user_setting_wins(tmp_path):
    code = "from vidseq import cli; cli.quiet_libraries(); import tensorflow as tf; tf.constant(1)"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")}
    env["PYTHONPATH"] = str(REPO)
    quiet = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    if not os.path.exists(cli.NVIDIA_DRIVER):  # where TensorFlow finds no driver, cuInit fails on every start
        assert "failed call to cuInit" not in quiet.stderr
        loud = subprocess.run([sys.executable, "-c", code], env={**env, "TF_CPP_MIN_LOG_LEVEL": "0"},
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert "failed call to cuInit" in loud.stderr  # what the default hides, and the user's variable is kept
    code = "import os; from vidseq import cli; cli.quiet_libraries(); print(os.environ['MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR'])"
    shown = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert shown.stdout.strip() == "false"
