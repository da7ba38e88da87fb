"""Registration stage: registers the trained model and moves ``@champion`` only through a gate.

``python -m training.register --model models --metrics reports/metrics.json --output reports/registry.json``
``[--params params.yaml]``

Continues the training run (or logs it now if training was not tracked), logs the servable
pyfunc ``video_classifier`` (:mod:`training.serving`) and registers it as a new version of
``register.model_name`` with alias ``@challenger``. The alias ``@champion`` moves to the new
version only if its ``register.metric`` (video-level test accuracy) is at least
``register.min_accuracy`` and not worse than the current champion's: TFX's "blessing" with
MLflow aliases (stages are deprecated). Aliases move atomically
(``set_registered_model_alias``). The decision, its reason and the aliases are written to
``registry.json`` and set as tags on the version and the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any

from pipeline.config import ConfigError, DataConfig, load_section, read_params
from pipeline.records import ContractError

from training.orchestration_config import CHALLENGER, CHAMPION, MlflowConfig, RegisterConfig

logger = logging.getLogger(__name__)

TAG_PREFIX = "vidseq."


@dataclasses.dataclass(frozen=True)
class Decision:
    """The promotion gate's verdict.

    Attributes:
        promote: whether ``@champion`` moves to the new version.
        reason: one sentence saying why, with the numbers.
    """

    promote: bool
    reason: str


def decide(metric: str, value: float, min_accuracy: float, champion: tuple[str, float | None] | None) -> Decision:
    """The promotion gate (pure).

    Args:
        metric: the compared metric's name, for the reason.
        value: the new version's metric.
        min_accuracy: the lowest value a champion may have.
        champion: ``(version, value)`` of the current champion (value ``None`` if it has no
            recorded value: compared as 0), or ``None`` if there is none.

    Returns:
        Promote iff ``value >= min_accuracy`` and ``value >=`` the champion's value.
    """
    passed = f"{metric} {value:.4f} >= register.min_accuracy {min_accuracy:.4f}"
    if not value >= min_accuracy:  # also catches NaN
        return Decision(False, f"{metric} {value:.4f} is below register.min_accuracy {min_accuracy:.4f}")
    if champion is None:
        return Decision(True, f"{passed} and there is no champion yet")
    version, best = champion
    best_value = 0.0 if best is None else best
    if value >= best_value:
        return Decision(True, f"{passed} and >= champion v{version}'s {best_value:.4f}")
    return Decision(False, f"{metric} {value:.4f} is worse than champion v{version}'s {best_value:.4f}")


def current_champion(client: Any, name: str, metric: str) -> tuple[str, float | None] | None:
    """``(version, metric value)`` of ``name@champion``, or ``None`` if no version has the alias.

    The value is the version's ``vidseq.<metric>`` tag, else its run's ``test_<metric>``.
    """
    from mlflow.exceptions import MlflowException

    from training.tracking import METRIC_PREFIX, metric_key

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    tag = version.tags.get(TAG_PREFIX + metric)
    if tag is not None:
        return version.version, float(tag)
    if version.run_id:
        with_metric = client.get_run(version.run_id).data.metrics.get(metric_key(METRIC_PREFIX + metric))
        if with_metric is not None:
            return version.version, float(with_metric)
    logger.warning("champion v%s of %s has no recorded %s: it is compared as 0", version.version, name, metric)
    return version.version, None


def register_version(model_uri: str, run_id: str, value: float, cfg: RegisterConfig) -> dict[str, Any]:
    """Registers ``model_uri`` as a new version of ``cfg.model_name`` and applies the gate.

    Returns:
        The registry record (see :func:`register`).
    """
    import mlflow

    client = mlflow.MlflowClient()
    version = mlflow.register_model(model_uri, cfg.model_name, tags={TAG_PREFIX + cfg.metric: str(value)})
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
    previous = current_champion(client, cfg.model_name, cfg.metric)
    decision = decide(cfg.metric, value, cfg.min_accuracy, previous)
    if decision.promote:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version.version)
    champion = current_champion(client, cfg.model_name, cfg.metric)
    aliases = sorted(client.get_model_version(cfg.model_name, version.version).aliases)
    record = {
        "model_name": cfg.model_name,
        "version": int(version.version),
        "model_uri": f"models:/{cfg.model_name}/{version.version}",
        "source": model_uri,
        "run_id": run_id,
        "aliases": aliases,
        "decision": "promoted" if decision.promote else "rejected",
        "reason": decision.reason,
        "metric": cfg.metric,
        "value": value,
        "min_accuracy": cfg.min_accuracy,
        "previous_champion": None if previous is None else {"version": int(previous[0]), cfg.metric: previous[1]},
        "champion": None if champion is None else {"version": int(champion[0]), cfg.metric: champion[1]},
    }
    for key, tag in (("decision", record["decision"]), ("reason", decision.reason), ("registry", json.dumps(record))):
        client.set_model_version_tag(cfg.model_name, version.version, TAG_PREFIX + key, tag)
    return record


def register(
    model_dir: str,
    metrics_path: str,
    output_path: str,
    *,
    register_cfg: RegisterConfig,
    mlflow_cfg: MlflowConfig,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Logs the servable model into the model's run, registers it, gates ``@champion``.

    Args:
        model_dir: the training output folder (``model.keras``, ``dataset.json``, run file).
        metrics_path: the evaluation's ``metrics.json``.
        output_path: where to write the registry record (``registry.json``).
        register_cfg: the ``register`` section.
        mlflow_cfg: the ``mlflow`` section.
        params: all parameter sections: ``data.records_dir`` for lineage, and everything
            is logged into the run created for a model trained without tracking.

    Returns:
        The record written to ``output_path``: ``model_name``, ``version``, ``model_uri``,
        ``run_id``, ``aliases``, ``decision`` (``promoted``/``rejected``), ``reason``,
        ``metric``, ``value``, ``min_accuracy``, ``previous_champion``, ``champion``,
        ``tracking_uri``.

    Raises:
        KeyError: if ``metrics.json`` lacks ``register.metric``.
    """
    import mlflow

    from training import model_logging, serving, tracking

    metrics = tracking.read_metrics(metrics_path)
    if register_cfg.metric not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise KeyError(f"{metrics_path} has no {register_cfg.metric!r} (register.metric); it has {', '.join(numeric)}")
    value = float(metrics[register_cfg.metric])
    records_dir = load_section(DataConfig, params, "data").records_dir
    with tracking.open_model_run(model_dir, params=params, config=mlflow_cfg, records_dir=records_dir) as run:
        run_id = run.info.run_id
        tracking.ensure_evaluation_logged(metrics_path, register_cfg.metric)
        names = model_logging.logged_model_names(run_id)
        if serving.PYFUNC_MODEL in names:
            model_uri = f"models:/{names[serving.PYFUNC_MODEL]}"
        else:
            model_uri = serving.log_video_classifier(model_dir).model_uri
        record = register_version(model_uri, run_id, value, register_cfg)
        record["tracking_uri"] = tracking.tracking_uri()
        mlflow.set_tags({
            TAG_PREFIX + "registered_model": register_cfg.model_name,
            TAG_PREFIX + "registered_version": str(record["version"]),
            TAG_PREFIX + "decision": record["decision"],
        })  # fmt: skip
        mlflow.log_dict(record, "registry.json")
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    return record


def main(argv: list[str] | None = None) -> int:
    """CLI: register with the ``register`` and ``mlflow`` sections of ``--params``."""
    parser = argparse.ArgumentParser(prog="python -m training.register", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models", help="training output folder (default: models)")
    parser.add_argument("--metrics", default="reports/metrics.json", help="evaluation metrics (default: %(default)s)")
    parser.add_argument("--output", default="reports/registry.json", help="registry record (default: %(default)s)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from training.tracking import TrackingError

    try:
        params = read_params(args.params)
        register_cfg = load_section(RegisterConfig, params, "register")
        mlflow_cfg = load_section(MlflowConfig, params, "mlflow")
        if not os.path.isdir(args.model):
            raise FileNotFoundError(
                f"model folder {args.model} not found: train first (python -m training.train --output {args.model})"
            )
        record = register(
            args.model, args.metrics, args.output, register_cfg=register_cfg, mlflow_cfg=mlflow_cfg, params=params
        )
    except (ConfigError, ContractError, TrackingError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    print(
        f"{record['model_name']} v{record['version']} ({', '.join('@' + a for a in record['aliases'])}): "
        f"{record['decision']}: {record['reason']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
