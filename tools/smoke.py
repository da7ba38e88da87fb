"""The smoke path: the user-facing commands, in order, on tiny generated data in one folder.

Synthesises a few tiny demo videos, then runs the real commands as a user would, each in its own
process: ``python -m pipeline`` (preprocess), ``python -m training.train`` (1 epoch, the tiny model),
``training.evaluate``, ``training.register`` (gate at 0, so a champion exists) and
``training.predict`` on one video through ``models:/<name>@champion``. Everything it writes (videos,
records, models, reports, the MLflow store) stays inside the folder it is given.

``make check-latest`` runs it in a throw-away venv holding the newest releases inside the ranges;
the test suite runs it on the locked set. Exit status: 0 when every command passed, else 1 after a
line naming the command that failed (its output is shown above it).

Usage::

    python tools/smoke.py WORKDIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence

import yaml

MODEL_NAME = "vidseq-smoke"
# The tiny model of training.model.TINY, spelled out: this module imports neither TensorFlow nor
# the training package, so a broken release shows up in the commands' own output.
PARAMS = {
    "data": {"synth_videos_per_class": 4},  # 24 videos in 12 groups
    # smoke-0 draws 7 of the 12 groups for train, 3 for val, 2 for test
    "preprocess": {"sequence_length": 4, "height": 24, "width": 24, "fps": 4.0, "clips_per_video": 2,
                   "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_salt": "smoke-0"},
    "model": {"conv_filters": [4], "rnn_units": 4, "temporal_input": "frames", "dropout": 0.0},
    "train": {"epochs": 1, "batch_size": 4, "early_stopping_patience": 0},
    "register": {"model_name": MODEL_NAME, "min_accuracy": 0.0},
}


def steps(workdir: str, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of each command of the smoke path, in order."""
    params = os.path.join(workdir, "params.yaml")
    videos, records = os.path.join(workdir, "videos"), os.path.join(workdir, "records")
    models, reports = os.path.join(workdir, "models"), os.path.join(workdir, "reports")
    count = str(PARAMS["data"]["synth_videos_per_class"])
    return [
        ("synth", [python, "-m", "pipeline.synth", "--output", videos, "--videos-per-class", count, "--no-progress"]),
        ("preprocess", [python, "-m", "pipeline", "--input", videos, "--output", records, "--params", params]),
        ("train", [python, "-m", "training.train", "--records", records, "--output", models, "--params", params,
                   "--verbose", "0"]),
        ("evaluate", [python, "-m", "training.evaluate", "--records", records, "--model", models, "--output",
                      reports, "--params", params]),
        ("register", [python, "-m", "training.register", "--model", models, "--metrics",
                      os.path.join(reports, "metrics.json"), "--output", os.path.join(reports, "registry.json"),
                      "--params", params]),
        ("predict", [python, "-m", "training.predict", "--params", params, "--top-k", "1"]),
    ]


def first_video(videos: str) -> str:
    """The first video of the synthesised tree, in sorted order."""
    for root, dirs, files in sorted(os.walk(videos)):
        dirs.sort()
        for name in sorted(files):
            if not name.startswith("."):
                return os.path.join(root, name)
    raise FileNotFoundError(f"no video under {videos}")


def run(workdir: str, python: str = sys.executable) -> int:
    """Runs the smoke path in ``workdir`` (created if missing); returns the exit status."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "params.yaml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(PARAMS, handle, sort_keys=False)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{os.path.join(workdir, 'mlflow.db')}"}
    for name, argv in steps(workdir, python):
        if name == "predict":
            argv = [*argv, first_video(os.path.join(workdir, "videos"))]
        started = time.monotonic()
        print(f"smoke: {name}: {' '.join(argv[1:])}", flush=True)
        done = subprocess.run(argv, cwd=workdir, env=env, check=False)
        if done.returncode != 0:
            print(f"error: smoke path failed at {name} (exit {done.returncode}): see its output above", flush=True)
            return 1
        print(f"smoke: {name} passed in {time.monotonic() - started:.1f} s", flush=True)
    print("smoke: preprocess, train, evaluate, register and predict passed", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/smoke.py", description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="folder for everything the path writes (created if missing)")
    return run(parser.parse_args(argv).workdir)


if __name__ == "__main__":
    sys.exit(main())
