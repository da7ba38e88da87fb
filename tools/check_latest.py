"""`make check-latest`: the newest releases inside pyproject.toml's ranges, tried before users meet them.

In a throw-away venv (a temporary folder, removed afterwards unless ``--keep``), pip installs vidseq
with its ``team`` and ``dev`` extras from this checkout the way a user who ``pip install``s it gets
it: from the ranges, ignoring ``requirements.lock``. Then it

1. lists which packages resolve to another release than the lock holds (or are new or gone), and
2. runs the smoke path (`tools/smoke.py`: preprocess, 1-epoch train, evaluate, register and
   predict on tiny generated videos) with that venv's Python, from a folder outside the checkout.

Exit status: 0 when the smoke path passed (whatever the differences), 1 when it failed, 2 when the
venv could not be made or installed. Only the standard library is used: it runs with the system
Python, before any venv exists.

Usage::

    python -m tools.check_latest [--lock requirements.lock] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Sequence

from tools import lockfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# What a copy of the checkout leaves out: outputs, stores, venvs, and what a build writes in-tree.
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".dvc", "data", "models", "reports", "mlruns", "mlartifacts",
                                     "mlflow.db", "dvc_plots", "build", "dist", "*.egg-info", "__pycache__")  # fmt: skip


def newest_environment(folder: str, repo: str = REPO) -> str:
    """Makes a venv in ``folder`` holding vidseq[dev] at the newest releases in its ranges; returns its python.

    pip builds vidseq from a copy of the checkout (it builds in the source tree, writing ``build/``
    and ``*.egg-info``), not editable: the package as a user installs it, from pyproject's ranges.
    """
    source = os.path.join(folder, "source")
    shutil.copytree(repo, source, ignore=_NOT_SOURCE)
    venv.EnvBuilder(with_pip=True).create(os.path.join(folder, "venv"))
    python = os.path.join(folder, "venv", "bin", "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", f"{source}[dev]"], check=True)
    return python


def resolved(python: str) -> dict[str, str]:
    """``{normalized name: version}`` of what ``python``'s environment holds (pip's own listing)."""
    listing = subprocess.run([python, "-m", "pip", "list", "--format", "json"], check=True, capture_output=True,
                             text=True).stdout  # fmt: skip
    return {lockfile.normalize(row["name"]): row["version"] for row in json.loads(listing)}


def report(locked: dict[str, str], found: dict[str, str]) -> list[str]:
    """The lines that say how the newest resolution differs from the lock."""
    diff = lockfile.differences(locked, found)
    if not diff:
        return ["the newest releases inside the ranges are exactly the lock"]
    lines = diff.lines(locked, found, what="newest")
    return [f"{len(lines)} package(s) differ from the lock (make lock takes them):", *(f"  {line}" for line in lines)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.check_latest", description=__doc__.splitlines()[0])
    parser.add_argument("--lock", default=os.path.join(REPO, "requirements.lock"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary venv and smoke folder")
    args = parser.parse_args(argv)
    with open(args.lock, encoding="utf-8") as handle:
        locked = lockfile.read_lock(handle.read())
    top = tempfile.mkdtemp(prefix="vidseq-latest-")
    started = time.monotonic()
    try:
        print(f"check-latest: installing vidseq[dev] at the newest releases inside its ranges into {top}/venv", flush=True)
        try:
            python = newest_environment(top)
        except subprocess.CalledProcessError as exc:
            print(f"error: pip could not install the newest releases inside pyproject.toml's ranges (exit "
                  f"{exc.returncode}, output above): a range admits no installable set", flush=True)
            return 2
        for line in report(locked, resolved(python)):
            print(f"check-latest: {line}", flush=True)
        env = {**os.environ, "PATH": os.path.join(top, "venv", "bin") + os.pathsep + os.environ.get("PATH", "")}
        env.pop("PYTHONPATH", None)
        smoke = subprocess.run([python, os.path.join(REPO, "tools", "smoke.py"), os.path.join(top, "smoke")], cwd=top,
                               env=env, check=False)  # fmt: skip
        minutes = (time.monotonic() - started) / 60
        if smoke.returncode != 0:
            print(f"error: check-latest: the smoke path fails on the newest releases ({minutes:.1f} min): keep the "
                  "lock, fix what the output above names, then make lock", flush=True)
            return 1
        print(f"check-latest: the smoke path passes on the newest releases ({minutes:.1f} min)", flush=True)
        return 0
    finally:
        if args.keep:
            print(f"check-latest: kept {top}", flush=True)
        else:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
