"""The model registry: registers the trained model and moves ``@champion`` only through a gate.

Continues the training run (or logs it now if training was not tracked), logs the servable
pyfunc ``video_classifier`` (:mod:`training.tracking.pyfunc`) and registers it as a new version of
``register.model_name`` with alias ``@challenger``. The alias ``@champion`` moves to the new
version only if its ``register.metric`` (video-level test accuracy) is at least
``register.min_accuracy`` and not worse than the current champion's: TFX's "blessing" with
MLflow aliases (stages are deprecated). Aliases move atomically
(``set_registered_model_alias``) but MLflow has no compare-and-set, so the gate converges
instead: each version is tagged with its metric and whether it passed ``min_accuracy``, and
a registration points ``@champion`` at the best passed version it sees, re-reading until the
alias agrees (:func:`settle_champion`); concurrent registrations thus end on the best one.
The decision, its reason and the aliases (as read at the end) are written to
``registry.json`` (also the run's artifact ``registry.json``); the version gets short tags
(decision, reason, ``vidseq.record``: the ``runs:/`` URI of its record, :func:`record_artifact`) and, like the run and the
registered model (while it is the champion), the model card as its description.

Datasets never mix: each version is tagged with the class list it was trained on
(``vidseq.classes``), only versions with the same list compete, and a version whose classes
differ from the champion's is never compared with it (it stays ``@challenger``; the reason says
to give the dataset its own ``register.model_name``). Versions from before the tag count as
matching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from training.artifacts import MODELS_DIR, REGISTERED_JSON
from vidseq.errors import VidseqError
from vidseq.params import CHALLENGER, CHAMPION, MlflowConfig, Params, RegisterConfig

logger = logging.getLogger(__name__)


class MetricMissingError(VidseqError):
    """``metrics.json`` lacks the metric the gate compares (``register.metric``)."""

TAG_PREFIX = "vidseq."


GATE_TAG = TAG_PREFIX + "gate"  # "passed" on a version whose metric reached register.min_accuracy
CLASSES_TAG = TAG_PREFIX + "classes"  # JSON list of the class names the version was trained on
PASSED = "passed"
REGISTRY_ARTIFACT = "registry.json"  # the run's latest registry record (each version's: record_artifact)
MAX_ROUNDS = 20  # alias write + re-read rounds; concurrent registrations settle in a few


@dataclasses.dataclass(frozen=True)
class Decision:
    """The promotion gate's verdict.

    Attributes:
        promote: whether ``@champion`` moves to the new version.
        reason: one sentence saying why, with the numbers.
    """

    promote: bool
    reason: str


def passes(value: float, min_accuracy: float) -> bool:
    """Whether a version with metric ``value`` may ever be champion (``False`` for NaN)."""
    return value >= min_accuracy


def ranking(version: int | str, value: float | None) -> tuple[float, int]:
    """The order of champions: the higher metric wins, a tie goes to the newer version.

    A value of ``None`` (a champion without a recorded metric) counts as 0.
    """
    return (0.0 if value is None else value, int(version))


def decide(
    metric: str,
    value: float,
    min_accuracy: float,
    champion: tuple[str, float | None] | None,
    *,
    version: int | None = None,
    classes: list[str] | None = None,
    champion_classes: list[str] | None = None,
) -> Decision:
    """The promotion gate (pure).

    Args:
        metric: the compared metric's name, for the reason.
        value: the new version's metric.
        min_accuracy: the lowest value a champion may have.
        champion: ``(version, value)`` of the best other version (the champion; value ``None``
            if it has no recorded value: compared as 0), or ``None`` if there is none.
        version: the new version's number; ``None`` means newer than ``champion``.
        classes: the new version's class list (``None``: unknown).
        champion_classes: the champion's class list (``None``: unknown, taken as matching).

    Returns:
        Never promote if both class lists are known and differ (another dataset: not
        compared). Otherwise promote iff ``value >= min_accuracy`` and ``value >=`` the
        champion's value (on a tie, iff the new version is the newer one: :func:`ranking`).
    """
    if champion is not None and not same_classes(classes, champion_classes):
        return Decision(False, mismatch_reason(champion[0], champion_classes or [], classes or []))
    passed = f"{metric} {value:.4f} >= register.min_accuracy {min_accuracy:.4f}"
    if not passes(value, min_accuracy):  # also catches NaN
        return Decision(False, f"{metric} {value:.4f} is below register.min_accuracy {min_accuracy:.4f}")
    if champion is None:
        return Decision(True, f"{passed} and there is no champion yet")
    other, best = champion
    best_value = 0.0 if best is None else best
    newer = version is None or version > int(other)
    if value > best_value or (value == best_value and newer):
        return Decision(True, f"{passed} and >= champion v{other}'s {best_value:.4f}")
    if value == best_value:
        return Decision(False, f"{metric} {value:.4f} ties the newer champion v{other}'s {best_value:.4f}")
    return Decision(False, f"{metric} {value:.4f} is worse than champion v{other}'s {best_value:.4f}")


def same_classes(mine: list[str] | None, theirs: list[str] | None) -> bool:
    """Whether two versions were trained on the same class list (an unknown list matches any)."""
    return mine is None or theirs is None or list(mine) == list(theirs)


def mismatch_reason(champion: str | int, champion_classes: list[str], classes: list[str]) -> str:
    """Why a version trained on other classes than the champion is not compared with it."""
    return (
        f"not compared: champion v{champion} was trained on {len(champion_classes)} classes "
        f"({', '.join(champion_classes)}) and this version on {len(classes)} ({', '.join(classes)}); "
        "a registered model holds one dataset: set register.model_name in params.yaml to a name of its own"
    )


def version_classes(version: Any) -> list[str] | None:
    """The class list a registered version was trained on (its ``vidseq.classes`` tag), or ``None``."""
    text = version.tags.get(CLASSES_TAG)
    return None if text is None else list(json.loads(text))


def champion_classes(client: Any, name: str) -> list[str] | None:
    """The class list of ``name@champion`` (``None`` if there is no champion or it has no tag)."""
    from mlflow.exceptions import MlflowException

    try:
        return version_classes(client.get_model_version_by_alias(name, CHAMPION))
    except MlflowException:
        return None


def current_champion(client: Any, name: str, metric: str) -> tuple[str, float | None] | None:
    """``(version, metric value)`` of ``name@champion``, or ``None`` if no version has the alias.

    The value is the version's ``vidseq.<metric>`` tag, else its run's ``test_<metric>``.
    """
    from mlflow.exceptions import MlflowException

    from training.tracking.runs import METRIC_PREFIX, metric_key

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


def passed_versions(client: Any, name: str, metric: str, classes: list[str] | None = None) -> dict[int, float]:
    """``{version: metric value}`` of every version of ``name`` tagged as having passed the gate.

    With ``classes``, only the versions trained on that class list (or on an unknown one).
    """
    found: dict[int, float] = {}
    token = None
    while True:
        page = client.search_model_versions(f"name='{name}'", page_token=token)
        for version in page:
            value = version.tags.get(TAG_PREFIX + metric)
            if version.tags.get(GATE_TAG) == PASSED and value is not None and same_classes(
                classes, version_classes(version)
            ):
                found[int(version.version)] = float(value)
        token = page.token
        if not token:
            return found


def settle_champion(
    client: Any, name: str, metric: str, classes: list[str] | None = None
) -> tuple[tuple[str, float | None] | None, dict[int, float | None], list[int]]:
    """Points ``@champion`` at the best version that passed the gate, until a re-read agrees.

    MLflow has no compare-and-set for aliases, so concurrent registrations may overwrite each
    other's alias with a stale choice. Each one therefore writes the best version it sees
    (:func:`ranking` over the passed versions and the current champion), re-reads, and
    repeats until the alias is the best it sees. Versions are only ever added, so the last
    writer's re-read sees every version registered before it, and any later one is seen by
    its own registration: ``@champion`` ends on the best passed version whatever the
    interleaving. To take a version out of the contest (a rollback), set its ``vidseq.gate``
    tag to anything but ``passed`` and move the alias.

    With ``classes``, only versions trained on that class list compete, and a champion trained
    on another list is left where it is (another dataset: never compared).

    Returns:
        ``(champion, candidates, writes)``: the champion and the ``{version: value}``
        candidates of the last read, and the versions this call pointed ``@champion`` at.
    """
    writes: list[int] = []
    for _ in range(MAX_ROUNDS):
        champion = current_champion(client, name, metric)
        if champion is not None and not same_classes(classes, champion_classes(client, name)):
            return champion, {}, writes
        candidates: dict[int, float | None] = dict(passed_versions(client, name, metric, classes))
        if champion is not None:
            candidates.setdefault(int(champion[0]), champion[1])
        if not candidates:
            return champion, candidates, writes
        best = max(candidates, key=lambda v: ranking(v, candidates[v]))
        if champion is not None and int(champion[0]) == best:
            return champion, candidates, writes
        client.set_registered_model_alias(name, CHAMPION, str(best))
        writes.append(best)
    logger.warning("@champion of %s still moving after %d rounds: reporting the last read", name, MAX_ROUNDS)
    return champion, candidates, writes


def _version_summary(client: Any, name: str, metric: str) -> tuple[list[tuple[int, float | None, bool]], str]:
    """``([(version, metric value or None, passed the gate)], words)`` of every version of ``name``, oldest first."""
    found = []
    token = None
    while True:
        page = client.search_model_versions(f"name='{name}'", page_token=token)
        for version in page:
            value = version.tags.get(TAG_PREFIX + metric)
            found.append((int(version.version), None if value is None else float(value), version.tags.get(GATE_TAG) == PASSED))
        token = page.token
        if not token:
            break
    found.sort()
    scored = [(v, x) for v, x, _ in found if x is not None]
    words = []
    if scored:
        best = max(scored, key=lambda item: ranking(*item))
        words.append(f"best v{best[0]} with {metric} {best[1]:.4f}")
    if found and (not scored or found[-1][0] != best[0]):
        last, value, _ = found[-1]
        words.append(f"last v{last}" + ("" if value is None else f" with {value:.4f}"))
    return found, ", ".join(words)


def missing_alias_reason(client: Any, name: str, alias: str, cfg: RegisterConfig | None = None) -> str | None:
    """Why ``models:/<name>@<alias>`` does not resolve, and what to load instead; ``None`` if it resolves.

    For ``@champion``: no version passed the gate (``register.min_accuracy`` of ``cfg``, and the
    best and last versions' metric from their tags), so predict with ``@challenger`` (the last
    version), ``models:/<name>/<version>`` or the training output folder. One line, for a CLI error.
    """
    from mlflow.exceptions import MlflowException

    cfg = cfg or RegisterConfig(model_name=name)
    folder = f"the training output folder: --model {MODELS_DIR}"
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return f"no model is registered as {name} in this store: train and register one (dvc repro), or predict with {folder}"
    aliases = dict(getattr(model, "aliases", None) or {})
    if alias in aliases:
        return None
    versions, words = _version_summary(client, name, cfg.metric)
    instead = (f"predict with the last registered version: --model models:/{name}@{CHALLENGER}, a version of your "
               f"choice: --model models:/{name}/<version>, or {folder}")  # fmt: skip
    if alias != CHAMPION:
        held = ", ".join(f"@{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
        return f"{name} has no alias @{alias} (its aliases: {held}); {instead}"
    if not versions:
        return f"{name} has no versions yet: train and register one (dvc repro), or predict with {folder}"
    gate = f"register.min_accuracy = {cfg.min_accuracy:g} on {cfg.metric}"
    count = f"{len(versions)} version{'s' if len(versions) != 1 else ''}" + (f": {words}" if words else "")
    if any(passed for _, _, passed in versions):
        return (f"no version of {name} holds @{CHAMPION} although one passed the gate ({gate}; {count}): "
                f"the alias was removed; set it again with the registry, or {instead}")  # fmt: skip
    return (f"no version of {name} has passed the promotion gate yet ({gate}; {count}), so none is "
            f"@{CHAMPION}; {instead}")  # fmt: skip


def register_version(
    model_uri: str, run_id: str, value: float, cfg: RegisterConfig, classes: list[str] | None = None
) -> dict[str, Any]:
    """Registers ``model_uri`` as a new version of ``cfg.model_name`` and applies the gate.

    The version is created with its metric, whether it passed ``min_accuracy`` and its class
    list (``classes``: the training dataset's) as tags;
    :func:`settle_champion` then moves ``@champion`` to the best passed version (this one or
    another), and the record states the outcome as read at the end.

    Returns:
        The registry record (see :func:`register`).
    """
    import mlflow

    client = mlflow.MlflowClient()
    name = cfg.model_name
    previous = current_champion(client, name, cfg.metric)
    tags = {TAG_PREFIX + cfg.metric: str(value), GATE_TAG: PASSED if passes(value, cfg.min_accuracy) else "failed"}
    if classes is not None:
        tags[CLASSES_TAG] = json.dumps(list(classes))
    version = mlflow.register_model(model_uri, name, tags=tags)
    mine = int(version.version)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    champion, candidates, writes = settle_champion(client, name, cfg.metric, classes)
    theirs = champion_classes(client, name)
    others = {v: x for v, x in candidates.items() if v != mine}
    best_other = max(others, key=lambda v: ranking(v, others[v])) if others else None
    if champion is not None and not same_classes(classes, theirs):  # another dataset holds @champion
        decision = decide(cfg.metric, value, cfg.min_accuracy, champion, version=mine, classes=classes,
                          champion_classes=theirs)  # fmt: skip
    else:
        decision = decide(
            cfg.metric, value, cfg.min_accuracy, None if best_other is None else (str(best_other), others[best_other]),
            version=mine,
        )  # fmt: skip
    is_champion = champion is not None and int(champion[0]) == mine
    if decision.promote != is_champion:  # only if settle_champion ran out of rounds: report what is
        holder = "this version" if is_champion else f"v{champion[0]}" if champion else "no version"
        decision = Decision(is_champion, f"@champion is {holder} while registrations still move it ({decision.reason})")
    aliases = sorted(client.get_model_version(name, version.version).aliases)
    record = {
        "model_name": name,
        "version": mine,
        "model_uri": f"models:/{name}/{version.version}",
        "source": model_uri,
        "run_id": run_id,
        "aliases": aliases,
        "decision": "promoted" if decision.promote else "rejected",
        "reason": decision.reason,
        "metric": cfg.metric,
        "value": value,
        "min_accuracy": cfg.min_accuracy,
        "classes": None if classes is None else list(classes),
        "previous_champion": None if previous is None else {"version": int(previous[0]), cfg.metric: previous[1]},
        "champion": None if champion is None else {"version": int(champion[0]), cfg.metric: champion[1]},
        "champion_writes": writes,
    }
    record_uri = f"runs:/{run_id}/{record_artifact(name, mine)}"  # the record itself is an artifact: tags stay short
    for key, tag in (("decision", record["decision"]), ("reason", decision.reason), ("record", record_uri)):
        client.set_model_version_tag(name, version.version, TAG_PREFIX + key, tag)
    return record


def register(
    model_dir: str,
    metrics_path: str,
    output_path: str,
    *,
    register_cfg: RegisterConfig,
    mlflow_cfg: MlflowConfig,
    params: Params,
) -> dict[str, Any]:
    """Logs the servable model into the model's run, registers it, gates ``@champion``.

    Args:
        model_dir: the training output folder (``model.keras``, ``dataset.json``, run file).
        metrics_path: the evaluation's ``metrics.json``.
        output_path: where to write the registry record (``registry.json``).
        register_cfg: the ``register`` section.
        mlflow_cfg: the ``mlflow`` section.
        params: all parameters: ``data.records_dir`` for lineage, and everything is logged
            into the run created for a model trained without tracking.

    Returns:
        The record written to ``output_path``: ``model_name``, ``version``, ``model_uri``,
        ``run_id``, ``aliases``, ``decision`` (``promoted``/``rejected``), ``reason``,
        ``metric``, ``value``, ``min_accuracy``, ``previous_champion`` (before this run),
        ``champion`` (as read at the end), ``champion_writes`` (the versions this run pointed
        ``@champion`` at: its own, or a better one a concurrent run had overwritten),
        ``tracking_uri``.

    Raises:
        MetricMissingError: if ``metrics.json`` lacks ``register.metric``.
    """
    import mlflow

    from pipeline import records
    from training.tracking import model_logging, pyfunc, runs

    metrics = runs.read_metrics(metrics_path)
    if register_cfg.metric not in metrics:
        numeric = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise MetricMissingError(
            f"{metrics_path} has no {register_cfg.metric!r} (register.metric); it has {', '.join(numeric)}"
        )
    value = float(metrics[register_cfg.metric])
    records_dir = params.data.records_dir
    with runs.open_model_run(model_dir, params=params.as_dict(), config=mlflow_cfg, records_dir=records_dir) as run:
        run_id = run.info.run_id
        runs.ensure_evaluation_logged(metrics_path, register_cfg.metric, step=runs.evaluation_step(model_dir))
        names = model_logging.logged_model_names(run_id)
        if pyfunc.PYFUNC_MODEL in names:
            model_uri = f"models:/{names[pyfunc.PYFUNC_MODEL]}"
        else:
            model_uri = pyfunc.log_video_classifier(model_dir, step=runs.trained_step(model_dir)).model_uri
        classes = list(records.read_spec(model_dir).classes)
        record = register_version(model_uri, run_id, value, register_cfg, classes)
        record["tracking_uri"] = runs.tracking_uri()
        mlflow.set_tags({
            TAG_PREFIX + "registered_model": register_cfg.model_name,
            TAG_PREFIX + "registered_version": str(record["version"]),
            TAG_PREFIX + "decision": record["decision"],
        })  # fmt: skip
        mlflow.log_dict(record, REGISTRY_ARTIFACT)  # the run's latest registration
        mlflow.log_dict(record, record_artifact(record["model_name"], record["version"]))  # this version's
        runs.link_model_metrics(run_id)  # the servable model shows the evaluation's metrics too
        describe_registration(record, records.read_spec(model_dir))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)), exist_ok=True)
    with open(output_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    write_registered(record, os.path.join(os.path.dirname(output_path), REGISTERED_JSON))
    return record


def write_registered(record: dict[str, Any], path: str) -> None:
    """Writes what was registered, without what differs between stores (run id, version, decision).

    The register stage's DVC output: missing in a fresh clone, so ``dvc repro`` registers there
    too, and the same model and metrics give the same bytes, so ``dvc.lock`` stays as committed.
    """
    stable = {key: record[key] for key in ("model_name", "classes", "metric", "value", "min_accuracy")}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(stable, handle, indent=2)
        handle.write("\n")


def record_artifact(name: str, version: int | str) -> str:
    """The run artifact holding the registry record of version ``version`` of ``name``."""
    from training.tracking.model_card import RECORD_ARTIFACT

    return RECORD_ARTIFACT.format(name=name, version=version)


def describe_registration(record: dict[str, Any], spec: Any) -> str:
    """Sets the model card (:mod:`training.tracking.model_card`) as the run's and the version's description.

    The registered model's description becomes the card of its champion: set when this version
    is promoted (or while the model has no description at all).

    Returns:
        The card.
    """
    import mlflow

    from training.tracking import model_card

    client = mlflow.MlflowClient()
    text = model_card.describe_run(record["run_id"], spec, record=record)
    name = record["model_name"]
    client.update_model_version(name, str(record["version"]), description=text)
    if record["decision"] == "promoted" or not client.get_registered_model(name).description:
        client.update_registered_model(name, description=text)
    return text


def describe(record: dict[str, Any]) -> str:
    """One line for a registry record: ``<name> v<N> (@aliases): <decision>: <reason>``."""
    aliases = ", ".join("@" + alias for alias in record["aliases"])
    return f"{record['model_name']} v{record['version']} ({aliases}): {record['decision']}: {record['reason']}"
