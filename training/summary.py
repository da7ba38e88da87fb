"""End-of-pipeline summary: where to look (MLflow UI, DVC metrics) and which version is champion.

``python -m training.summary [--params params.yaml] [--metrics reports/metrics.json]``
``[--registry reports/registry.json]``

Printed at the end of ``make demo``. Reads the registry from ``MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db``; never creates a store that does not exist yet.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from training import artifacts
from vidseq import cli
from vidseq.errors import VidseqError
from vidseq.params import CHAMPION, DEFAULT_PARAMS, MlflowConfig, Params, RegisterConfig

logger = logging.getLogger(__name__)

UI_PORT = 5000
SERVE_PORT = 5001
_HEADLINE = (("video_balanced_accuracy", "balanced video accuracy"), ("accuracy", "clip accuracy"),
             ("shuffled_accuracy", "shuffled-frames accuracy"))  # fmt: skip


def _store_exists(uri: str) -> bool:
    from training.tracking.runs import sqlite_path

    database = sqlite_path(uri)
    return database is None or database.exists()  # a server or another database: ask it


def champion(cfg: RegisterConfig) -> dict[str, Any] | None:
    """``{"version", "run_id", "value"}`` of ``<model_name>@champion``, or ``None``.

    Raises:
        MlflowException: if the store cannot be reached.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.tracking.registry import current_champion
    from training.tracking.runs import tracking_uri

    uri = tracking_uri()
    if not _store_exists(uri):
        return None
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    found = current_champion(client, cfg.model_name, cfg.metric)
    if found is None:
        return None
    try:
        run_id = client.get_model_version_by_alias(cfg.model_name, CHAMPION).run_id
    except MlflowException:
        run_id = None
    return {"version": found[0], "value": found[1], "run_id": run_id}


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    return data if isinstance(data, dict) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def test_lines(metrics: dict[str, Any]) -> list[str]:
    """``Test: video accuracy 0.6250 (95 % Wilson interval 0.5026-0.7341, 64 videos), majority baseline ...``.

    Then a ``warning:`` line when the model does not beat the majority baseline
    (:func:`training.metrics.baseline_warning`). An older metrics.json shows what it has.
    """
    from training.metrics import baseline_warning

    parts = []
    if _is_number(metrics.get("video_accuracy")):
        part = f"video accuracy {metrics['video_accuracy']:.4f}"
        low, high = metrics.get("video_accuracy_ci_low"), metrics.get("video_accuracy_ci_high")
        if _is_number(low) and _is_number(high):
            videos = f", {metrics['videos']} videos" if _is_number(metrics.get("videos")) else ""
            part += f" (95 % Wilson interval {low:.4f}-{high:.4f}{videos})"
        parts.append(part)
    if _is_number(metrics.get("majority_baseline")):
        which = f" (always {metrics['majority_class']})" if metrics.get("majority_class") else ""
        parts.append(f"majority baseline {metrics['majority_baseline']:.4f}{which}")
    parts += [f"{label} {metrics[key]:.4f}" for key, label in _HEADLINE if _is_number(metrics.get(key))]
    lines = [f"Test: {', '.join(parts)}"]
    warning = baseline_warning(metrics)
    if warning:
        lines.append(f"  warning: {warning}")
    return lines


def summary_lines(
    register_cfg: RegisterConfig,
    mlflow_cfg: MlflowConfig,
    metrics: dict[str, Any] | None,
    registry: dict[str, Any] | None,
    best: dict[str, Any] | None,
) -> list[str]:
    """The lines :func:`main` prints (pure, for tests)."""
    from training.tracking.runs import tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        browse = f"  browse: open {uri}"
    else:
        browse = (
            f"  browse: make ui  (mlflow ui --backend-store-uri {uri} on http://127.0.0.1:{UI_PORT}), "
            "then open the experiment link it prints"
        )
    lines = [
        f"MLflow: runs of experiment {mlflow_cfg.experiment_name!r} and the registry are in {uri}",
        browse,
        "DVC: dvc metrics show | dvc metrics diff | dvc plots show | dvc exp show --only-changed",
    ]
    if metrics:
        lines += test_lines(metrics)
    if registry:
        lines.append(
            f"Last registration: {registry.get('model_name')} v{registry.get('version')} "
            f"{registry.get('decision')}: {registry.get('reason')}"
        )
    if best:
        value = "unknown" if best["value"] is None else f"{best['value']:.4f}"
        lines.append(
            f"Champion: {register_cfg.champion_uri} is version {best['version']} "
            f"({register_cfg.metric} {value}, run {best['run_id']})"
        )
        lines.append(
            "  predict: python -m training.predict VIDEO...   serve: mlflow models serve "
            f"-m {register_cfg.champion_uri} --env-manager local --host 127.0.0.1 --port {SERVE_PORT}"
        )
    elif registry:
        lines.append(
            f"Champion: none yet for {register_cfg.model_name}: no version passed the gate (register.min_accuracy "
            f"{register_cfg.min_accuracy:g}); predict with the last version: python -m training.predict --model "
            f"models:/{register_cfg.model_name}@challenger VIDEO... (or --model models, the training output folder)"
        )
    else:
        lines.append(
            f"Champion: none yet for {register_cfg.model_name}: "
            "run `make demo` or `dvc repro` to train and register one"
        )
    return lines


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.summary", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--metrics", default=artifacts.report_path(artifacts.METRICS_JSON),
                        help="evaluation metrics (default: %(default)s)")  # fmt: skip
    parser.add_argument("--registry", default=artifacts.report_path(artifacts.REGISTRY_JSON),
                        help="registry record (default: %(default)s)")  # fmt: skip
    args = parser.parse_args(argv)
    from mlflow.exceptions import MlflowException

    params = Params.load(args.params)
    try:
        best = champion(params.register)
    except MlflowException as exc:
        raise VidseqError(f"cannot read the MLflow registry: {str(exc.message).splitlines()[0]}") from exc
    for line in summary_lines(params.register, params.mlflow, _read_json(args.metrics), _read_json(args.registry), best):
        print(line)


main = cli.harness(_run, log_level=logging.WARNING)

if __name__ == "__main__":
    sys.exit(main())
