"""Run names and run tags that tell runs apart: the DVC experiment, else ``<commit>-<dataset>-<n>``.

MLflow draws a random run name from Python's ``random`` module, which training seeds, so every
run would get the same name. Names here come from what the run is instead:

* under ``dvc exp run`` DVC puts ``DVC_EXP_NAME`` (the experiment's name) and
  ``DVC_EXP_BASELINE_REV`` (the commit it branches from) in the stage's environment
  (``dvc/repo/experiments/queue/base.py``): the run is named after the experiment and tagged
  ``vidseq.dvc.experiment`` / ``vidseq.dvc.baseline``;
* otherwise ``<git short sha>-<dataset>-<n>``: ``n`` counts the runs of the experiment with
  that prefix (``a1b2c3d-demo-1``, ``a1b2c3d-demo-2``, ...); ``nogit`` outside a git checkout.
  Runs started at the same moment would count the same ``n``: on a sqlite store the count and the
  run's creation happen under the store's lock; elsewhere (a tracking server) :func:`settle_run_name`
  moves runs that share a name on to the next free numbers.
"""

from __future__ import annotations

import os
import posixpath
import random
import re
import time
from collections.abc import Mapping
from typing import Any

DVC_EXP_NAME = "DVC_EXP_NAME"
DVC_EXP_BASELINE_REV = "DVC_EXP_BASELINE_REV"
EXPERIMENT_TAG = "vidseq.dvc.experiment"
BASELINE_TAG = "vidseq.dvc.baseline"
DATASET_TAG = "vidseq.dataset"
SHORT_SHA = 7
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def input_folder_name(raw_dir: str) -> str:
    """The name of the folder the videos come from: ``data/demo`` -> ``demo``, ``data/fight/manifest.csv`` -> ``fight``.

    A manifest CSV is named by the folder that holds it, never ``manifest.csv``; one in the
    current folder by that folder.
    """
    path = str(raw_dir).rstrip("/")
    if path.lower().endswith(".csv"):
        remote = "://" in path
        path = (posixpath.dirname(path) if remote else os.path.dirname(os.path.abspath(path))) or path
    if "://" in path:
        return posixpath.basename(path.split("://", 1)[1].rstrip("/")) or ""
    return os.path.basename(os.path.normpath(path))


def dataset_name(records_dir: str | None, params: Mapping[str, Any] | None = None) -> str:
    """A short name of the data: ``data.name``, else the videos' folder, else the records folder.

    ``data.records_dir`` made from ``data.raw_dir: data/demo`` is ``demo``, from
    ``data/fight/manifest.csv`` it is ``fight`` (:func:`input_folder_name`), or ``data.name``
    when set. Records given elsewhere (``--records /data/ucf101``) are named by their folder
    (``ucf101``): ``data`` describes other records.
    """
    data = (params or {}).get("data") or {}
    raw, default_records, given = data.get("raw_dir"), data.get("records_dir"), data.get("name")
    same = records_dir and default_records and os.path.normpath(records_dir) == os.path.normpath(default_records)
    name = ""
    if same or not records_dir:
        name = given or (input_folder_name(raw) if raw else "")
    if not name and records_dir:
        name = os.path.basename(os.path.normpath(str(records_dir).rstrip("/")))
    return _UNSAFE.sub("_", name or "records")


def dvc_experiment(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(experiment name, baseline commit)`` when run by ``dvc exp run``, else ``(None, None)``."""
    env = os.environ if environ is None else environ
    return env.get(DVC_EXP_NAME) or None, env.get(DVC_EXP_BASELINE_REV) or None


def next_run_name(client: Any, experiment_id: str, prefix: str) -> str:
    """``<prefix>-<n>``: one more than the runs of the experiment named ``<prefix>-<number>``."""
    taken = 0
    token = None
    pattern = re.compile(re.escape(prefix) + r"-(\d+)$")
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"attributes.run_name LIKE '{prefix}-%'", max_results=1000, page_token=token
        )
        for run in page:
            found = pattern.match(run.info.run_name or "")
            if found:
                taken = max(taken, int(found.group(1)))
        token = page.token
        if not token:
            return f"{prefix}-{taken + 1}"


def settle_run_name(client: Any, experiment_id: str, run_id: str, prefix: str) -> str:
    """Makes a generated ``<prefix>-<n>`` name the run's own; returns the name it ends with.

    A run that sees another run with its name takes :func:`next_run_name` (after a random pause
    of up to 0.2 s, so runs that collide together draw apart) and checks again. Whichever of two
    runs renames last sees the other when it checks, so no two runs keep one name; runs that
    collide may leave a number unused. On a sqlite store, :func:`training.tracking.runs` counts
    and creates each run under the store's lock, so there is nothing to settle there.
    """
    pause = random.SystemRandom()  # not the seeded ``random``: training seeds it, every run would pause alike
    while True:
        name = client.get_run(run_id).info.run_name
        same = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'", max_results=10)
        if all(other.info.run_id == run_id for other in same):
            return name
        time.sleep(pause.uniform(0.0, 0.2))
        client.update_run(run_id, name=next_run_name(client, experiment_id, prefix))


def run_identity(
    client: Any,
    experiment_id: str,
    *,
    commit: str | None,
    dataset: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[str, dict[str, str]]:
    """The run's name and the tags saying where it comes from.

    Returns:
        ``(run name, tags)``: tags ``vidseq.dataset`` and, under ``dvc exp run``,
        ``vidseq.dvc.experiment`` and ``vidseq.dvc.baseline``.
    """
    experiment, baseline = dvc_experiment(environ)
    tags = {DATASET_TAG: dataset}
    if baseline:
        tags[BASELINE_TAG] = baseline
    if experiment:
        tags[EXPERIMENT_TAG] = experiment
        return experiment, tags
    return next_run_name(client, experiment_id, name_prefix(commit, dataset)), tags


def name_prefix(commit: str | None, dataset: str) -> str:
    """``<git short sha>-<dataset>`` (``nogit-<dataset>`` outside a git checkout): what generated names count under."""
    return f"{commit[:SHORT_SHA] if commit else 'nogit'}-{dataset}"
