"""MLflow tracking for the stages: one run per pipeline run, shared by train, evaluate and register.

Train opens the run with :func:`start_run` and writes its id to ``OUTPUT/mlflow_run.json``;
evaluate and register continue the same run with :func:`resume_run` from the model directory.
The store is ``MLFLOW_TRACKING_URI`` or MLflow's default ``sqlite:///mlflow.db`` (a real
database, which the Model Registry needs), a relative one resolved against the DVC workspace
(:func:`tracking_uri`, also inside DVC's temporary experiment copies); the experiment is
``mlflow.experiment_name``.

What lands in the run:

* train: every parameter it was given, flattened (``model.rnn_units``); the dataset spec as
  ``dataset.*`` parameters and a ``dataset.json`` artifact; tags ``mlflow.source.git.commit``,
  ``vidseq.git.dirty``, ``vidseq.records.dvc_md5`` (the records' DVC hash: data lineage);
  the preprocessing errors summary (``preprocessing/errors_summary.json``, metric
  ``preprocess_errors``); per-epoch metrics (``loss``, ``val_accuracy``, ... at step = epoch);
  the curves PNG and history; the Keras model ``keras_model`` with the tensor signature
  ``(-1, T, H, W, C) float32 -> (-1, classes)`` and an input example.
* evaluate: every number of ``metrics.json`` as ``test_<key>`` and the reports
  (``evaluation/metrics.json``, confusion matrix PNG/CSV, per-class CSV).
* register: the servable pyfunc ``video_classifier`` (:mod:`training.tracking.pyfunc`),
  registered and gated by :mod:`training.tracking.registry`.

The stages call one function each (:func:`track_training`, :func:`track_evaluation`,
:func:`open_model_run`); the pieces they are made of are public for finer use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from pipeline import records
from vidseq.validation import flatten
from pipeline.records import DatasetSpec

from training.tracking import datasets, lineage, model_card, naming, relocation, review
from training.artifacts import (
    EVALUATION_ARTIFACTS,
    HISTORY_JSON,
    METRICS_JSON,
    RUN_FILE,
    TRAINING_ARTIFACTS,
    model_files,
)
from vidseq.errors import VidseqError
from training.tracking.model_logging import KERAS_MODEL, log_keras_model, logged_model_names
from vidseq.params import MlflowConfig

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
DVC_ROOT_ENV = "DVC_ROOT"  # dvc.env.DVC_ROOT: set by DVC for every stage command
_EXPS_TMP_DIR = (".dvc", "tmp", "exps")  # where DVC makes the copies of --temp and queued experiments
METRIC_PREFIX = "test_"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # read by MLflow 3's UI (mlflow/server/js)
CUSTOM_MODEL_DEVELOPMENT = "custom_model_development"  # its kind for model training (vs genai_development)
_MAX_PARAM_LENGTH = 6000
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")


class TrackingError(VidseqError):
    """The run a stage should continue cannot be found; the message says what to do."""


# --------------------------------------------------------------------------- store and runs


def workspace_root(cwd: str | None = None) -> Path | None:
    """The DVC workspace a stage runs for, also from inside DVC's temporary copies.

    ``dvc exp run --temp`` and queued experiments run in a copy under ``<workspace>/.dvc/tmp/exps/``
    that DVC deletes afterwards; DVC sets ``DVC_ROOT`` for every stage command to the workspace's
    root (``dvc repro``, ``dvc exp run``) or, in those copies, to the root of the repository that
    made the experiment. Without ``DVC_ROOT``, a working directory inside ``.dvc/tmp/exps/`` still
    names the workspace.

    Returns:
        The workspace root, or ``None`` outside a DVC stage.
    """
    root = os.environ.get(DVC_ROOT_ENV)
    if root:
        return Path(root)
    here = Path(cwd or os.getcwd()).resolve()
    for parent in here.parents:
        if parent.parts[-len(_EXPS_TMP_DIR) :] == _EXPS_TMP_DIR:
            return parent.parents[len(_EXPS_TMP_DIR) - 1]
    return None


def resolve_store_uri(uri: str, root: Path | None) -> str:
    """``uri`` with a relative local path (``sqlite:///mlflow.db``, ``file:mlruns``, ``mlruns``) made absolute against ``root``."""
    if root is None:
        return uri
    if uri.startswith("sqlite:///"):
        path, query = _split_query(uri[len("sqlite:///") :])
        if not path or path == ":memory:" or Path(path).expanduser().is_absolute():
            return uri
        return f"sqlite:///{os.path.normpath(root / path)}{query}"
    scheme = urllib.parse.urlparse(uri).scheme
    if scheme == "file" and not uri.startswith("file:/"):
        return Path(os.path.normpath(root / uri[len("file:") :])).as_uri()
    if not scheme and not Path(uri).expanduser().is_absolute():
        return os.path.normpath(root / uri)
    return uri


def _split_query(text: str) -> tuple[str, str]:
    path, mark, query = text.partition("?")
    return path, mark + query


def tracking_uri() -> str:
    """The store the stages log to: ``MLFLOW_TRACKING_URI``, else MLflow's default ``sqlite:///mlflow.db``.

    Inside a DVC stage a relative local store is the workspace's (:func:`workspace_root`), so an
    experiment run in a temporary copy logs where ``dvc repro`` does and its runs survive the copy.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    return resolve_store_uri(uri, workspace_root())


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; ``None`` for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    path, _ = _split_query(uri[len("sqlite:///") :])
    return Path(path).expanduser() if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Holds an exclusive lock on a sqlite store's file (no-op for other stores): table creation, run naming.

    MLflow creates and migrates a new sqlite store's tables on first use without a lock between
    processes, so stages starting at once on a new ``mlflow.db`` (parallel queue workers) would
    all create them and fail ("table ... already exists"); their later writes wait for each other
    (MLflow sets ``busy_timeout``). The lock is a ``flock`` on the database file itself (created
    empty if missing, which SQLite takes as a new database), separate from SQLite's own
    ``fcntl`` locks, so the workspace gets no extra file.
    """
    database = sqlite_path(uri)
    if database is None:
        yield
        return
    database.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(database, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def follow_moved_store(uri: str) -> dict[str, Any] | None:
    """:func:`training.tracking.relocation.follow` for a sqlite store (call it holding :func:`store_lock`)."""
    database = sqlite_path(uri)
    return None if database is None else relocation.follow(database)  # it checks the database is there


def open_store() -> str:
    """Points MLflow at :func:`tracking_uri`, a moved local store repaired first; returns the URI.

    For readers (``predict``, ``serve``, ``make ui``): unlike :func:`configure`, it creates no
    store and no experiment.
    """
    uri = tracking_uri()
    database = sqlite_path(uri)
    if database is not None and database.is_file():  # store_lock would create a missing one
        with store_lock(uri):
            follow_moved_store(uri)
    mlflow.set_tracking_uri(uri)
    return uri


def _artifact_location(uri: str) -> str | None:
    """``<folder of the sqlite file>/mlruns`` for a sqlite store; the server decides otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :]).expanduser().resolve()
    return (database.parent / "mlruns").as_uri()


def configure(config: MlflowConfig | None = None) -> str:
    """Points MLflow at the tracking store and the experiment, creating it if needed.

    Args:
        config: the ``mlflow`` section (default: its defaults).

    Returns:
        The experiment id.

    Raises:
        TrackingError: if the experiment exists but was deleted.
    """
    config = config or MlflowConfig()
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    with store_lock(uri):  # the first call creates a new store's tables: one process at a time
        follow_moved_store(uri)  # a repository moved with its store: artifact paths follow it
        experiment = mlflow.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            try:
                experiment_id = mlflow.create_experiment(config.experiment_name, _artifact_location(uri))
            except MlflowException:  # created meanwhile by a concurrent stage (a shared server)
                experiment = mlflow.get_experiment_by_name(config.experiment_name)
                if experiment is None:
                    raise
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(
                f"MLflow experiment {config.experiment_name!r} is deleted in {uri}: restore it "
                f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or set mlflow.experiment_name"
            )
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _begin_run(
    params: Mapping[str, Any],
    spec: DatasetSpec,
    *,
    records_dir: str | None,
    config: MlflowConfig | None,
    run_name: str | None,
) -> mlflow.ActiveRun:
    """Starts a run and logs parameters, the spec, lineage and identity tags, the training inputs, the errors summary.

    The run is named by :mod:`training.tracking.naming` (never by MLflow's generator, which draws
    from the seeded ``random``) and the experiment is marked as model training (:func:`set_experiment_kind`).
    """
    experiment_id = configure(config)
    set_experiment_kind(experiment_id)
    tags = lineage_tags(records_dir)
    client = mlflow.MlflowClient()
    commit, dataset = tags.get("mlflow.source.git.commit"), naming.dataset_name(records_dir, params)
    with store_lock(tracking_uri()):  # a sqlite store: count and create one run at a time
        name, identity = naming.run_identity(client, experiment_id, commit=commit, dataset=dataset)
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name or name)
    try:
        if run_name is None and naming.EXPERIMENT_TAG not in identity:  # a counted name: unique on a server too
            naming.settle_run_name(client, experiment_id, active.info.run_id, naming.name_prefix(commit, dataset))
        log_params_once(params)
        log_spec(spec)
        mlflow.set_tags({**tags, **identity})
        if records_dir:
            log_preprocessing_errors(records_dir)
            datasets.log_records_inputs(
                records_dir, spec, ("train", "val"), name=identity[naming.DATASET_TAG],
                digest=tags.get("vidseq.records.dvc_md5"),
            )  # fmt: skip
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return active


def start_run(
    output_dir: str,
    params: Mapping[str, Any],
    spec: DatasetSpec,
    *,
    records_dir: str | None = None,
    config: MlflowConfig | None = None,
    run_name: str | None = None,
) -> mlflow.ActiveRun:
    """Opens the pipeline run's MLflow run (train) and writes ``output_dir/mlflow_run.json``.

    Use it as a context manager (``with start_run(...):``); an exception inside marks the run
    ``FAILED``.

    Args:
        output_dir: the training output directory; evaluate and register find the run there.
        params: parameter sections (e.g. ``read_params("params.yaml")``), logged flattened.
        spec: the records' spec the model is trained on.
        records_dir: the records directory: its DVC hash becomes a tag, its ``errors.jsonl``
            an errors summary.
        config: the ``mlflow`` section.
        run_name: MLflow's run name (default: generated).

    Returns:
        The active run.
    """
    active = _begin_run(params, spec, records_dir=records_dir, config=config, run_name=run_name)
    try:
        write_run_file(output_dir, active.info.run_id, active.info.experiment_id)
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    return active


def write_run_file(output_dir: str, run_id: str, experiment_id: str) -> str:
    """Writes ``mlflow_run.json`` (run id, experiment, store) into ``output_dir``; returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RUN_FILE)
    info = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri()}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
        handle.write("\n")
    return path


def read_run_file(model_dir: str) -> dict[str, str]:
    """Reads ``model_dir/mlflow_run.json``.

    Raises:
        TrackingError: if the file is missing or unreadable.
    """
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.exists(path):
        raise TrackingError(
            f"{path} not found: the model in {model_dir} was trained without MLflow tracking "
            "(training writes it with training.tracking.start_run)"
        )
    try:
        with open(path, encoding="utf-8") as handle:
            info = json.load(handle)
        return {"run_id": str(info["run_id"]), **{k: str(v) for k, v in info.items()}}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise TrackingError(f"{path} is not a run file ({exc}): retrain to write it again") from exc


def has_run_file(model_dir: str) -> bool:
    """Whether ``model_dir`` holds the ``mlflow_run.json`` of a tracked training run."""
    return os.path.exists(os.path.join(model_dir, RUN_FILE))


def resume_run(model_dir: str) -> mlflow.ActiveRun:
    """Continues the run that trained the model in ``model_dir`` (evaluate, register).

    Returns:
        The active run (use it as a context manager).

    Raises:
        TrackingError: if ``model_dir`` has no run file, or the run is not in the store.
    """
    info = read_run_file(model_dir)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.MlflowClient().get_run(info["run_id"])
    except MlflowException as exc:
        stored = info.get("tracking_uri", "?")
        hint = f"; it was logged to {stored}: set MLFLOW_TRACKING_URI={stored}" if stored != uri else ""
        raise TrackingError(
            f"MLflow run {info['run_id']} of {model_dir} is not in the tracking store {uri}{hint}"
        ) from exc
    mlflow.set_experiment(experiment_id=run.info.experiment_id)
    return mlflow.start_run(run_id=run.info.run_id)


# --------------------------------------------------------------------------- parameters and tags


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        text = json.dumps(list(value))
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."


def log_params_once(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Logs ``params`` flattened (``{"a": {"b": 1}}`` -> ``a.b``) into the active run.

    A parameter already logged with the same value is skipped; one logged with another value
    keeps its first value (MLflow parameters are immutable) and is reported as a warning, e.g.
    an ``evaluate`` parameter changed between evaluations of one trained model.

    Returns:
        The parameters newly logged.
    """
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call start_run or resume_run first")
    flat = {key: _param_value(value) for key, value in flatten(params, prefix).items()}
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    changed = sorted(k for k, v in flat.items() if k in existing and existing[k] != v)
    if changed:
        logger.warning(
            "run %s keeps the first value of %s (changed since it was logged; MLflow parameters are immutable)",
            run.info.run_id, ", ".join(changed),
        )  # fmt: skip
    new = {k: v for k, v in flat.items() if k not in existing}
    if new:
        mlflow.log_params(new)
    return new


def spec_params(spec: DatasetSpec) -> dict[str, Any]:
    """The dataset spec as ``dataset.*`` parameters (classes joined, splits and sampling flattened)."""
    data = spec.to_dict()
    data["classes"] = ",".join(spec.classes)
    data["num_classes"] = spec.num_classes
    data["clip_shape"] = "x".join(str(d) for d in spec.clip_shape)
    return flatten({"dataset": data})


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI page of an experiment's runs, in the model-training view (not 3.17's GenAI default).

    MLflow 3.17's UI no longer reads ``mlflow.experimentKind``: which view an experiment opens in
    comes from the URL's ``workflowType`` or else a per-browser setting that starts on GenAI.
    """
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def set_experiment_kind(experiment_id: str, kind: str = CUSTOM_MODEL_DEVELOPMENT) -> None:
    """Tags the experiment with its kind (``mlflow.experimentKind``) unless someone already chose one.

    MLflow 3's UI opens an experiment of kind ``custom_model_development`` on its runs and
    model-training pages (an unset kind is guessed, and an experiment without traces may open on
    the GenAI overview, calling the models "agent versions").
    """
    client = mlflow.MlflowClient()
    if EXPERIMENT_KIND_TAG not in client.get_experiment(experiment_id).tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, kind)


def log_spec(spec: DatasetSpec) -> None:
    """Logs the dataset spec as ``dataset.*`` parameters and as the ``dataset.json`` artifact."""
    log_params_once(spec_params(spec))
    mlflow.log_dict(spec.to_dict(), records.DATASET_JSON)


def lineage_tags(records_dir: str | None, repo_dir: str = ".") -> dict[str, str]:
    """Tags tying a run to its code and data.

    Returns:
        ``mlflow.source.git.commit`` and ``vidseq.git.dirty`` inside a git repository;
        ``vidseq.records.path``, ``vidseq.records.dvc_md5`` and ``vidseq.records.hash_source``
        (``dvc.lock`` or ``computed``) for a local records directory.
    """
    tags: dict[str, str] = {}
    sha, dirty = lineage.git_commit(repo_dir)
    if sha:
        tags["mlflow.source.git.commit"] = sha
        tags["vidseq.git.dirty"] = str(dirty).lower()
    if records_dir:
        tags["vidseq.records.path"] = records_dir
        md5, source = lineage.records_hash(records_dir, os.path.join(repo_dir, lineage.DVC_LOCK))
        if md5:
            tags["vidseq.records.dvc_md5"] = md5
            tags["vidseq.records.hash_source"] = source
    return tags


def log_preprocessing_errors(records_dir: str) -> dict[str, Any]:
    """Logs the summary of the records' ``errors.jsonl`` and metric ``preprocess_errors``."""
    summary = lineage.errors_summary(records_dir)
    mlflow.log_dict(summary, "preprocessing/errors_summary.json")
    mlflow.log_metric("preprocess_errors", summary["count"])
    return summary


# --------------------------------------------------------------------------- metrics


def metric_key(name: str) -> str:
    """``name`` with characters MLflow refuses in metric names (e.g. ``:``) replaced by ``_``."""
    return _BAD_KEY_CHARS.sub("_", name)


def log_history(history: Mapping[str, Sequence[float]]) -> int:
    """Logs per-epoch metrics of a Keras history at ``step = epoch`` (0-based).

    Args:
        history: ``{metric: [value per epoch]}``; an ``epoch`` list, if present, gives the
            steps (a resumed run's history starts where it left off).

    Returns:
        The number of values logged.
    """
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call start_run or resume_run first")
    series = {k: list(v) for k, v in history.items() if k != "epoch"}
    length = max((len(v) for v in series.values()), default=0)
    epochs = [int(e) for e in history.get("epoch", range(length))]
    now = int(time.time() * 1000)
    metrics = [
        Metric(metric_key(name), float(value), now, step)
        for name, values in series.items()
        for step, value in zip(epochs, values)
    ]
    if metrics:
        mlflow.MlflowClient().log_batch(run.info.run_id, metrics=metrics)
    return len(metrics)


def epoch_logger() -> Any:
    """A Keras callback logging each epoch's ``logs`` to the active run (for ``model.fit``).

    An alternative to :func:`log_history` for seeing long runs live; use one of the two.
    """
    import keras

    class MlflowEpochLogger(keras.callbacks.Callback):
        """Logs ``loss``, ``accuracy``, ``val_*`` ... at ``step = epoch`` after every epoch."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            values = {metric_key(k): float(v) for k, v in (logs or {}).items() if _is_number(v)}
            if values:
                mlflow.log_metrics(values, step=epoch)

    return MlflowEpochLogger()


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, bool)


def read_metrics(metrics_path: str) -> dict[str, Any]:
    """Reads an evaluation ``metrics.json``.

    Raises:
        FileNotFoundError: naming the file and the stage that writes it.
    """
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: evaluate the model first (python -m training.evaluate)")
    with open(metrics_path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{metrics_path} must hold a JSON object of metrics")
    return data


def log_evaluation(metrics_path: str, *, prefix: str = METRIC_PREFIX, step: int = 0) -> dict[str, float]:
    """Logs every number of ``metrics.json`` as ``<prefix><key>`` and the evaluation reports.

    The reports next to ``metrics.json`` (:data:`EVALUATION_ARTIFACTS`) go under ``evaluation/``.

    Each metric is logged once, at its value (a metric already in the run with the same value is
    not logged again: no one-value "series" from re-evaluations), at ``step`` (:func:`evaluation_step`:
    after the last epoch, so no logged model's step picks them up without their dataset), at full precision: rounding
    would change what the gate compared, and MLflow stores doubles either way. The values are
    then linked to the run's logged models (:func:`link_model_metrics`).

    Returns:
        The metrics logged.
    """
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call start_run or resume_run first")
    client = mlflow.MlflowClient()
    logged = client.get_run(run.info.run_id).data.metrics
    metrics = {
        metric_key(prefix + key): float(value)
        for key, value in read_metrics(metrics_path).items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    new = {k: v for k, v in metrics.items() if logged.get(k) != v}
    if new:  # the client's log_batch: the fluent log_metrics would link them to models logged at step 0
        now = int(time.time() * 1000)
        client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, step) for k, v in new.items()])
    link_model_metrics(run.info.run_id, prefix=prefix)
    folder = os.path.dirname(metrics_path)
    for name in EVALUATION_ARTIFACTS:
        path = os.path.join(folder, name) if name != METRICS_JSON else metrics_path
        if os.path.exists(path):
            mlflow.log_artifact(path, "evaluation")
    return metrics


def link_model_metrics(run_id: str, *, prefix: str = METRIC_PREFIX) -> dict[str, int]:
    """Attaches the run's ``<prefix>*`` metrics (the evaluation) to each model the run logged.

    MLflow 3 shows a logged model's (and so a registered version's) metrics from the metrics
    logged with its ``model_id``. The latest value of each metric is logged again with the model's
    id; being the same (key, timestamp, step, value), the run's own history keeps one value.

    Returns:
        ``{model name: metrics linked now}``.
    """
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    keys = [k for k in run.data.metrics if k.startswith(prefix)]
    evaluated = _evaluation_dataset(run)  # the model page then lists it under "Datasets used"
    latest = {}
    for key in keys:
        history = client.get_metric_history(run_id, key)
        if history:
            latest[key] = max(history, key=lambda m: (m.timestamp, m.step))
    done: dict[str, int] = {}
    for name, model_id in logged_model_names(run_id).items():
        have = {m.key: m.value for m in client.get_logged_model(model_id).metrics or []}
        missing = [m for k, m in latest.items() if have.get(k) != m.value]
        if missing:
            client.log_batch(run_id, metrics=[
                Metric(m.key, m.value, m.timestamp, m.step, model_id=model_id, run_id=run_id,
                       dataset_name=evaluated[0], dataset_digest=evaluated[1])
                for m in missing
            ])  # fmt: skip
        done[name] = len(missing)
    return done


def _evaluation_dataset(run: Any) -> tuple[str | None, str | None]:
    """``(name, digest)`` of the run's input in context ``evaluation``, or ``(None, None)``."""
    for item in (run.inputs.dataset_inputs if run.inputs else None) or []:
        if any(t.key == "mlflow.data.context" and t.value == datasets.CONTEXTS["test"] for t in item.tags):
            return item.dataset.name, item.dataset.digest
    return None, None


# --------------------------------------------------------------------------- training outputs


def log_training_outputs(output_dir: str, *, model: Any = None, history: bool = True) -> Any:
    """Logs what training wrote: per-epoch metrics, curves and history, the Keras model.

    Args:
        output_dir: the training output directory (``model.keras``, ``dataset.json``, ...).
        model: the trained model (default: loaded from ``model.keras``).
        history: log per-epoch metrics from ``history.json`` (False when an
            :func:`epoch_logger` already logged them during ``fit``).

    Returns:
        The Keras model's ``ModelInfo``.

    The model is logged at the step of the epoch whose weights it keeps (``best_epoch`` of
    ``history.json``), so MLflow attaches that epoch's metrics to it, not epoch 0's.
    """
    spec = records.read_spec(output_dir)
    history_path = os.path.join(output_dir, HISTORY_JSON)
    saved: dict[str, Any] = {}
    if os.path.exists(history_path):
        with open(history_path, encoding="utf-8") as handle:
            saved = json.load(handle)
    if history and saved:
        log_history(saved.get("history", {}))
    for name in TRAINING_ARTIFACTS:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            mlflow.log_artifact(path, "training")
    if model is None:
        import keras

        model = keras.saving.load_model(model_files(output_dir)[0])
    return log_keras_model(model, spec, step=model_step(saved))


def trained_step(model_dir: str) -> int:
    """:func:`model_step` of the ``history.json`` in ``model_dir`` (0 without one)."""
    path = os.path.join(model_dir, HISTORY_JSON)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return model_step(json.load(handle))


def evaluation_step(model_dir: str) -> int:
    """The step test metrics are logged at: one after the last epoch of ``history.json`` (0 without one)."""
    path = os.path.join(model_dir, HISTORY_JSON)
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        epochs = (json.load(handle).get("history") or {}).get("epoch") or []
    return int(epochs[-1]) + 1 if epochs else 0


def model_step(saved_history: Mapping[str, Any]) -> int:
    """The step a trained model is logged at: its ``best_epoch``, else the last epoch, else 0."""
    if isinstance(saved_history.get("best_epoch"), int):
        return int(saved_history["best_epoch"])
    epochs = (saved_history.get("history") or {}).get("epoch") or [0]
    return int(epochs[-1])


# --------------------------------------------------------------------------- one call per stage


def track_training(
    output_dir: str,
    params: Mapping[str, Any],
    *,
    records_dir: str,
    config: MlflowConfig | None = None,
    model: Any = None,
    history: bool = True,
) -> str:
    """Train's whole logging after ``training.train.train``: start the run, log, end it.

    Besides :func:`log_training_outputs`: the model summary (``training/model_summary.txt``,
    the ``--summary`` table, when ``params`` has a ``model`` section) and the model card as the
    run's description.

    Returns:
        The run id (also in ``output_dir/mlflow_run.json``).
    """
    spec = records.read_spec(output_dir)
    with start_run(output_dir, params, spec, records_dir=records_dir, config=config) as active:
        log_training_outputs(output_dir, model=model, history=history)
        log_model_summary(spec, params.get("model"))
        model_card.describe_run(active.info.run_id, spec)
        return active.info.run_id


def log_model_summary(spec: DatasetSpec, model_params: Mapping[str, Any] | None) -> str | None:
    """Logs :func:`training.model.summarize` (the shape through each layer) as ``training/model_summary.txt``."""
    if model_params is None:
        return None
    from training.model import summarize
    from vidseq.params import ModelConfig
    from vidseq.validation import from_mapping

    text = summarize(spec, from_mapping(ModelConfig, model_params, "model"))
    mlflow.log_text(text + "\n", "training/model_summary.txt")
    return text


def track_evaluation(
    model_dir: str,
    metrics_path: str,
    *,
    params: Mapping[str, Any] | None = None,
    records_dir: str | None = None,
    split: str = "test",
    warning: str | None = None,
) -> str:
    """Evaluate's whole logging: continue the training run, log ``params`` and the metrics.

    ``warning`` (the model does not beat the majority baseline: :func:`training.metrics.baseline_warning`)
    becomes the run's ``vidseq.evaluate.baseline_warning`` tag, which the model card shows; without
    one, a tag from an earlier evaluation is removed. With ``records_dir`` also: the evaluated split as the run's ``evaluation`` input, the test
    clips sheet and animation and the per-class table (:mod:`training.tracking.review`), and
    the model card, now with the test metrics, as the run's description.

    Returns:
        The run id.
    """
    with resume_run(model_dir) as active:
        run_id = active.info.run_id
        if params:
            log_params_once(params)
        mlflow.set_tag("vidseq.evaluate.split", split)
        if warning:
            mlflow.set_tag(model_card.BASELINE_WARNING_TAG, warning)
        elif model_card.BASELINE_WARNING_TAG in mlflow.MlflowClient().get_run(run_id).data.tags:
            mlflow.MlflowClient().delete_tag(run_id, model_card.BASELINE_WARNING_TAG)
        spec = records.read_spec(model_dir)
        if records_dir:  # the evaluated split first: the metrics linked to the models name it
            tags = mlflow.MlflowClient().get_run(run_id).data.tags
            name = tags.get(naming.DATASET_TAG) or naming.dataset_name(records_dir)
            records_spec = records.read_spec(records_dir)
            same = os.path.normpath(tags.get("vidseq.records.path", "")) == os.path.normpath(records_dir)
            md5 = tags.get("vidseq.records.dvc_md5") if same else lineage.records_hash(records_dir)[0]
            datasets.log_records_inputs(records_dir, records_spec, (split,), name=name, digest=md5)
        log_evaluation(metrics_path, step=evaluation_step(model_dir))
        if records_dir:
            review.log_review(run_id, records_dir, os.path.dirname(metrics_path), records_spec, split)
        model_card.describe_run(run_id, spec)
        return run_id


@contextlib.contextmanager
def open_model_run(
    model_dir: str,
    *,
    params: Mapping[str, Any],
    config: MlflowConfig | None = None,
    records_dir: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """The run of the model in ``model_dir`` for register: resumed, or backfilled if untracked.

    A model trained without tracking (no ``mlflow_run.json``) gets a new run holding what
    training would have logged (parameters, spec, lineage, history, curves, Keras model).
    ``model_dir`` is never written to: it is the train stage's DVC output.

    Yields:
        The active run; it ends when the block does (``FAILED`` on an exception).
    """
    if has_run_file(model_dir):
        active = resume_run(model_dir)
    else:
        logger.info("%s has no %s: logging the untracked training run now", model_dir, RUN_FILE)
        spec = records.read_spec(model_dir)
        active = _begin_run(params, spec, records_dir=records_dir, config=config, run_name=None)
        mlflow.set_tag("vidseq.backfilled", "true")
    with active:
        if not has_run_file(model_dir):
            log_training_outputs(model_dir)
        elif KERAS_MODEL not in logged_model_names(active.info.run_id):
            log_training_outputs(model_dir, history=False)
        yield active


def ensure_evaluation_logged(metrics_path: str, metric: str, *, prefix: str = METRIC_PREFIX, step: int = 0) -> bool:
    """Logs ``metrics.json`` into the active run unless its ``metric`` is already there, equal.

    Returns:
        Whether it logged.
    """
    run = mlflow.active_run()
    if run is None:
        raise TrackingError("no active MLflow run: call start_run or resume_run first")
    value = read_metrics(metrics_path).get(metric)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics.get(metric_key(prefix + metric))
    if value is not None and logged is not None and math.isclose(float(value), logged, rel_tol=1e-9, abs_tol=1e-12):
        return False
    log_evaluation(metrics_path, prefix=prefix, step=step)
    return True
