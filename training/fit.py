"""Fitting the CNN-LSTM: optimiser, callbacks, resumable ``fit`` and the files it leaves.

:func:`train` fits a model on the records' train split, validating on ``val``, and writes into
the output folder (names in :mod:`training.artifacts`) ``model.keras`` (best weights on
validation), ``dataset.json`` (the spec it was trained on), ``history.json``, ``history.csv``
(one row per epoch, for ``dvc plots``) and ``training_curves.png``. A run that is killed
resumes from its last completed epoch when started again with the same output folder (Keras
``BackupAndRestore``; the backup lives in ``OUTPUT/backup`` until training succeeds).

Several workers train together when ``TF_CONFIG`` names more than one (the TensorFlow
convention: every worker runs the same command with its own ``TF_CONFIG``), with
``MultiWorkerMirroredStrategy``: each worker reads its own part of the splits (whole shard
files, or every N-th record when there are fewer files than workers), only the chief writes
into the output folder, the others write into a temporary folder that they remove, and an
interrupted run resumes from the chief's backup when all workers are started again.
With a frozen pretrained backbone (``model.freeze_backbone``) a single worker trains on the
frozen-feature path: the per-frame features of train and val come from :mod:`training.features`
(computed once, cached) and only the head is fitted on them; the head shares its layers with the
whole model, which is what is saved. ``train.fine_tune_*`` then fine-tunes the backbone's top
layers with the head, end to end on the frames (:func:`_fine_tune`).
The stage entry point is ``python -m training.train``; this module imports no MLflow.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from pipeline import records
from pipeline.records import DatasetSpec
from training.artifacts import (
    BACKUP_DIR,
    BEST_WEIGHTS,
    CURVES_PNG,
    DATASET_JSON,
    HISTORY_CSV,
    HISTORY_JSON,
    MODEL_FILE,
    RESUME_JSON,
)
from training.backbones import backbone_of, unfreeze_top
from training.data import check_compatible, make_dataset
from training.features import split_features
from training.heads import standardizer
from training.model import build_model, save_model, split_model
from training.shards import count_clips, reading_records
from vidseq.errors import VidseqError
from vidseq.params import ModelConfig, TrainConfig

CACHE_DIR = "cache"  # OUTPUT/cache: train.cache's file cache of encoded records from an object store

logger = logging.getLogger(__name__)



class DivergedError(VidseqError, FloatingPointError):
    """Training diverged (loss NaN); the message says which parameter to lower."""


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        model: the trained model, best weights on validation.
        spec: the records' spec the model was built for.
        history: ``{metric: [value per epoch]}`` over all epochs, resumed ones included.
        initial_epoch: 0 for a fresh run, else the epoch a resumed run started at.
        best_epoch: the (0-based) epoch whose weights were kept.
        seconds: wall time of this call's ``fit``.
        paths: ``{"model", "dataset", "history_json", "history_csv", "curves"}`` -> file.
        workers: the workers that trained together (1 without ``TF_CONFIG``).
    """

    model: keras.Model
    spec: DatasetSpec
    history: dict[str, list[float]]
    initial_epoch: int
    best_epoch: int
    seconds: float
    paths: dict[str, str]
    workers: Workers = dataclasses.field(default_factory=lambda: Workers())


# --------------------------------------------------------------------------- workers


@dataclasses.dataclass(frozen=True)
class Workers:
    """Who trains together, as ``TF_CONFIG`` says.

    Attributes:
        count: workers in the cluster (a ``chief`` task counts as one).
        index: this worker's place, 0 to count - 1, the chief first.
        chief: whether this worker writes the outputs (the ``chief`` task, else worker 0).
        task: ``worker:1``, ``chief:0``; ``local`` without ``TF_CONFIG``.
    """

    count: int = 1
    index: int = 0
    chief: bool = True
    task: str = "local"

    @property
    def several(self) -> bool:
        return self.count > 1


def workers_from_env(environ: Any = None) -> Workers:
    """The workers that ``TF_CONFIG`` names; one (this process) when it is unset or names one.

    Raises:
        VidseqError: if ``TF_CONFIG`` is not JSON with ``cluster`` and ``task``, or names
            parameter servers or an evaluator (only synchronous workers are supported).
    """
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "").strip()
    if not raw:
        return Workers()
    try:
        config = json.loads(raw)
        cluster, task = config.get("cluster") or {}, config.get("task") or {}
        kind, number = str(task.get("type", "")), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError) as exc:
        raise VidseqError(
            f"TF_CONFIG is not a cluster description ({exc}): set it to "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": N}}'
        ) from None
    other = sorted(set(cluster) - {"chief", "worker"})
    if other or kind not in ("chief", "worker"):
        raise VidseqError(
            f"TF_CONFIG names {other or [kind]} tasks: training runs synchronous workers only "
            "(MultiWorkerMirroredStrategy): give the cluster 'worker' (and at most one 'chief') entries"
        )
    chiefs, workers = list(cluster.get("chief") or []), list(cluster.get("worker") or [])
    count = len(chiefs) + len(workers)
    if kind == "chief":
        return Workers(count, number, True, f"chief:{number}")
    return Workers(count, len(chiefs) + number, not chiefs and number == 0, f"worker:{number}")


def select_strategy(workers: Workers | None = None) -> tf.distribute.Strategy:
    """``MultiWorkerMirroredStrategy`` for several workers, ``MirroredStrategy`` for several GPUs, else the default.

    Create it before any other TensorFlow op: the workers' collectives are set up at start.
    """
    if workers is not None and workers.several:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        _patch_keras_for_multi_worker()
        logger.info(
            "training on %d workers together (MultiWorkerMirroredStrategy, %d replicas); this is %s%s",
            workers.count, strategy.num_replicas_in_sync, workers.task, " (chief)" if workers.chief else "",
        )  # fmt: skip
        return strategy
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def _patch_keras_for_multi_worker() -> None:
    """Keras 3's reduction of a step's logs fails under MultiWorkerMirroredStrategy; reduce them across workers.

    ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` calls ``strategy.reduce("MEAN",
    v, axis=0)`` on scalar logs (loss, accuracy), which TensorFlow rejects. Mean and sum become
    ``axis=None`` reductions across all replicas, so every worker sees the same logs (and its
    callbacks decide alike); ``concat`` (predict) is left to Keras.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as keras_trainer

    original = getattr(keras_trainer.reduce_per_replica, "__wrapped__", keras_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean", "sum") and keras_trainer._collective_all_reduce_multi_worker(strategy):
            op = "SUM" if reduction == "sum" else "MEAN"
            return tree.map_structure(lambda v: strategy.reduce(op, v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    keras_trainer.reduce_per_replica = reduce_per_replica


def _build_for_workers(model: keras.Model, spec: DatasetSpec, strategy: tf.distribute.Strategy) -> None:
    """Builds the optimizer and metrics on a dummy batch inside the strategy, as Keras would on the first batch.

    Keras 3 reduces the first distributed batch to build them (``_maybe_symbolic_build``), a
    reduction of a nested batch that MultiWorkerMirroredStrategy rejects; built here, that
    step is skipped.
    """
    clips = tf.zeros((1, *spec.clip_shape), tf.float32)
    labels = tf.zeros((1,), tf.int32)
    with strategy.scope():
        model._symbolic_build(data_batch=(clips, labels))
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None


def _agree(strategy: tf.distribute.Strategy, value: int) -> bool:
    """Whether every worker passes the same ``value`` (a collective: all workers must call it)."""
    v = float(value)
    total = strategy.reduce("SUM", tf.constant([v, v * v, 1.0]), axis=None).numpy()
    return abs(total[2] * total[1] - total[0] ** 2) < 0.5


def configure_mixed_precision(enabled: bool) -> bool:
    """Sets the ``mixed_float16`` policy if asked and a GPU exists; returns whether it did."""
    if not enabled:
        return False
    if not tf.config.list_physical_devices("GPU"):
        logger.warning("train.mixed_precision is only used on GPUs: training in float32 on this CPU")
        return False
    keras.mixed_precision.set_global_policy("mixed_float16")
    return True


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """Adam with the ``train.lr_schedule`` learning rate."""
    learning_rate: Any = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, cfg.epochs * steps_per_epoch)
    return keras.optimizers.Adam(learning_rate, weight_decay=cfg.weight_decay or None)


def compile_model(model: keras.Model, cfg: TrainConfig, steps_per_epoch: int) -> keras.Model:
    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    return model


class _FirstEpoch(keras.callbacks.Callback):
    """Records the epoch ``fit`` starts at (after ``BackupAndRestore`` restored a backup)."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch: int | None = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.epoch is None:
            self.epoch = epoch
            if epoch:
                logger.info("resuming an interrupted run at epoch %d", epoch + 1)


def train(
    records_dir: str,
    output_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    *,
    verbose: int | str = 0,
) -> TrainResult:
    """Trains a model on ``records_dir`` and writes it and its history into ``output_dir``.

    Starting again with the same ``output_dir`` after an interruption resumes from the last
    completed epoch; a finished output directory is overwritten by a fresh run.

    Raises:
        EmptySplitError: if the train or val split has no clips.
        ContractError: if the records do not fit the model.
        DamagedRecordsError: if a train or val shard is corrupt or truncated (names file and record).
        StorageError: if the records' store cannot be read (one line naming the URL).

    With several workers in ``TF_CONFIG`` every worker calls this with the same arguments; the
    chief writes ``output_dir``, the others a temporary folder that they remove.
    """
    workers = workers_from_env()
    strategy = select_strategy(workers)  # first: the workers' collectives start before any other op
    keras.utils.set_random_seed(train_cfg.seed)
    tf.config.experimental.enable_op_determinism()  # same records + params -> the same model bytes (dvc.lock)
    spec = records.read_spec(records_dir)
    train_clips = count_clips(records_dir, "train", spec)
    count_clips(records_dir, "val", spec)
    steps_per_epoch = math.ceil(train_clips / train_cfg.batch_size)
    own_dir = output_dir if workers.chief else tempfile.mkdtemp(prefix=f"vidseq-{workers.task.replace(':', '')}-")
    try:
        result = _train(records_dir, output_dir, own_dir, spec, model_cfg, train_cfg, strategy, workers,
                        train_clips, steps_per_epoch, verbose)  # fmt: skip
    finally:
        if not workers.chief:  # the chief's output folder is the run's; this worker leaves nothing behind
            shutil.rmtree(own_dir, ignore_errors=True)
    return result


def _train(
    records_dir: str, output_dir: str, own_dir: str, spec: DatasetSpec, model_cfg: ModelConfig,
    train_cfg: TrainConfig, strategy: tf.distribute.Strategy, workers: Workers, train_clips: int,
    steps_per_epoch: int, verbose: int | str,
) -> TrainResult:  # fmt: skip
    paths = _output_paths(own_dir)
    fingerprint = {"model": model_cfg.as_dict(), "dataset": spec.to_dict()}
    if workers.chief:
        resuming = _can_resume(paths, fingerprint)
    else:
        resuming = _follow_chief(_output_paths(output_dir, create=False), paths, fingerprint)
    if not resuming:
        _remove(paths["history_csv"], paths["best_weights"])
    os.makedirs(os.path.dirname(paths["best_weights"]), exist_ok=True)
    cache_dir = os.path.join(own_dir, CACHE_DIR)
    shutil.rmtree(cache_dir, ignore_errors=True)  # a file cache of an interrupted run may be partial

    on_features = model_cfg.frozen_features and not workers.several
    if model_cfg.frozen_features and workers.several:
        logger.info("several workers: the frozen backbone runs on every epoch's frames (no feature cache)")
    if workers.several:
        if _agree(strategy, _backup_epoch(paths["backup"]) if resuming else -1) is False:
            raise VidseqError(
                f"the {workers.count} workers found different backups to resume in {output_dir}: the output "
                "folder must be on storage that every worker shares (NFS, a mounted volume); or delete "
                f"{paths['backup']} on every worker to start over"
            )
        train_ds, val_ds = _worker_datasets(records_dir, spec, train_cfg, strategy, cache_dir)
    elif not on_features:
        train_ds, val_ds = _frame_datasets(records_dir, spec, train_cfg, cache_dir)

    mixed = configure_mixed_precision(train_cfg.mixed_precision)
    try:
        with strategy.scope():
            model = build_model(spec, model_cfg)
        fitted = model  # what fit trains: the whole model, or its head on cached features
        if on_features:
            fitted, train_ds, val_ds = _feature_datasets(records_dir, spec, model, model_cfg, train_cfg)
        elif model_cfg.head == "temporal_stats" and model_cfg.standardize:
            _adapt_standardizer(model, make_dataset(records_dir, "train", spec, train_cfg.batch_size))
        with strategy.scope():
            compile_model(fitted, train_cfg, steps_per_epoch)
        if workers.several:
            check_compatible(model, spec, spec)
            _build_for_workers(model, spec, strategy)
        elif not on_features:
            check_compatible(model, train_ds, spec)
        first = _FirstEpoch()
        logger.info(
            "training %s on %d clips (%d steps/epoch) of %s for up to %d epochs%s",
            model.name if fitted is model else f"the head of {model.name} on cached features",
            train_clips, steps_per_epoch, spec.clip_shape, train_cfg.epochs,
            f" on {workers.count} workers" if workers.several else "",
        )  # fmt: skip
        start = time.perf_counter()
        with reading_records(records_dir, spec, "train", "val"), warnings.catch_warnings():  # damage: one error
            if workers.several:  # validation ends where the workers' parts end: not a short dataset
                warnings.filterwarnings("ignore", message="Your input ran out of data")
            fitted.fit(
                train_ds, validation_data=val_ds, epochs=train_cfg.epochs, verbose=verbose,
                callbacks=[first, *make_callbacks(paths, train_cfg, resuming)],
                steps_per_epoch=steps_per_epoch if workers.several else None,
                shuffle=False,  # the dataset shuffles itself
            )  # fmt: skip
        if os.path.exists(paths["best_weights"]):  # best over the whole run, resumed epochs included
            fitted.load_weights(paths["best_weights"])
        if train_cfg.fine_tune_epochs:
            _fine_tune(model, records_dir, spec, train_cfg, paths, cache_dir, verbose)
        seconds = time.perf_counter() - start
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy("float32")

    history = _dedupe_history(paths["history_csv"])
    if any(math.isnan(v) for v in history.get("loss", [])):
        raise DivergedError(
            f"training diverged (loss NaN) at epoch {len(history['loss'])}: lower train.learning_rate"
        )
    initial_epoch = first.epoch if first.epoch is not None else len(history.get("epoch", []))
    result = TrainResult(model, spec, history, initial_epoch, _best_epoch(history, train_cfg.monitor), seconds, {
        k: paths[k] for k in ("model", "dataset", "history_json", "history_csv", "curves")
    }, workers)  # fmt: skip
    write_outputs(result, train_cfg.monitor)  # every worker saves (a save may read synchronised variables)
    shutil.rmtree(os.path.dirname(paths["best_weights"]), ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    _remove(paths["resume"])
    if workers.several:
        logger.info(
            "%d workers trained together in %.1fs; best epoch %d; %s", workers.count, seconds, result.best_epoch + 1,
            f"wrote {output_dir}" if workers.chief else f"{workers.task} wrote nothing (the chief writes {output_dir})",
        )  # fmt: skip
    else:
        logger.info("trained in %.1fs; best epoch %d; wrote %s", seconds, result.best_epoch + 1, output_dir)
    return result


def _frame_datasets(records_dir: str, spec: DatasetSpec, cfg: TrainConfig, cache_dir: str) -> tuple[Any, Any]:
    """Train (shuffled, augmented) and val batches of clips."""
    train_ds = make_dataset(
        records_dir, "train", spec, cfg.batch_size, training=True, augment=cfg.augment, seed=cfg.seed,
        shuffle_buffer=cfg.shuffle_buffer, cache=cfg.cache, cache_dir=cache_dir,
    )  # fmt: skip
    val_ds = make_dataset(records_dir, "val", spec, cfg.batch_size, cache=cfg.cache, cache_dir=cache_dir)
    return train_ds, val_ds


def _feature_datasets(
    records_dir: str, spec: DatasetSpec, model: keras.Model, model_cfg: ModelConfig, cfg: TrainConfig
) -> tuple[keras.Model, Any, Any]:
    """The frozen-feature path: ``(head, train, val)``, the head to fit and its batches of cached features.

    The head shares its layers with ``model``: fitting it trains the whole model.
    """
    parts = split_model(model)
    if parts is None:
        raise VidseqError(f"{model.name} has no per-frame part to cache: set model.freeze_backbone false")
    feature_model, head = parts
    augment = cfg.augment
    if dataclasses.replace(augment, horizontal_flip=False).enabled:
        logger.info(
            "frozen-feature path: train.augment's crop, brightness and contrast are not applied (each clip's "
            "features are computed once, from the clip as recorded%s); set model.freeze_backbone false to train "
            "on augmented frames", ", and mirrored: horizontal_flip" if augment.horizontal_flip else "",
        )  # fmt: skip
    splits = {name: split_features(records_dir, name, spec, feature_model, cfg.feature_cache) for name in ("train", "val")}
    train = splits["train"]
    if augment.horizontal_flip:  # one fixed variant per clip: its features are cached like the clip's
        mirrored = split_features(records_dir, "train", spec, feature_model, cfg.feature_cache, mirrored=True)
        train = {key: np.concatenate([train[key], mirrored[key]]) for key in ("features", "labels")}
    if standardizer(head) is not None:
        _adapt_standardizer(head, tf.data.Dataset.from_tensor_slices(train["features"]).batch(256))
    train_ds = (
        tf.data.Dataset.from_tensor_slices((train["features"], train["labels"]))
        .shuffle(len(train["labels"]), seed=cfg.seed, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
    )
    val = splits["val"]
    val_ds = tf.data.Dataset.from_tensor_slices((val["features"], val["labels"])).batch(cfg.batch_size)
    return head, train_ds, val_ds


def _adapt_standardizer(model: keras.Model, data: tf.data.Dataset) -> None:
    """Adapts the ``temporal_stats`` head's ``standardize`` layer to the statistics of ``data``'s clips.

    ``model`` is the head (``data``: features) or a whole model whose head is inline (``data``:
    batches of clips, or ``(clips, labels)``).
    """
    layer = standardizer(model)
    if layer is None:
        head = split_model(model)
        layer = standardizer(head[1]) if head else None
        if layer is None:
            return
    statistics = keras.Model(model.input, layer.input)
    data = data.map(lambda *batch: batch[0])
    layer.adapt(np.concatenate([np.asarray(statistics.predict_on_batch(x)) for x in data.as_numpy_iterator()]))


def _fine_tune(
    model: keras.Model, records_dir: str, spec: DatasetSpec, cfg: TrainConfig, paths: dict[str, str],
    cache_dir: str, verbose: int | str,
) -> None:  # fmt: skip
    """Fine-tunes the top ``train.fine_tune_layers`` of the backbone with the head, end to end on the frames.

    Keras' transfer-learning guide: the head was trained on the frozen backbone first; now the
    backbone's top layers (BatchNormalization excepted: it stays in inference mode) train too, at
    ``train.fine_tune_learning_rate``, for ``train.fine_tune_epochs`` more epochs, with the same
    early stopping and best checkpoint; the epochs go on in ``history.csv``. Not resumable: a
    killed run trains the head again (seconds on cached features) and fine-tunes from its start.
    """
    backbone = backbone_of(model.get_layer("per_frame").layer)
    opened = unfreeze_top(backbone, cfg.fine_tune_layers)
    done = len(_read_csv(paths["history_csv"]))
    logger.info(
        "fine-tuning %d layers of %s with the head for %d epochs at learning rate %g",
        opened, backbone.name, cfg.fine_tune_epochs, cfg.fine_tune_learning_rate,
    )  # fmt: skip
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.fine_tune_learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    train_ds, val_ds = _frame_datasets(records_dir, spec, cfg, cache_dir)
    best = _best_logged(paths["history_csv"], cfg.monitor)
    checkpoint = os.path.join(os.path.dirname(paths["best_weights"]), "fine_tuned.weights.h5")
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(
            checkpoint, monitor=cfg.monitor, save_best_only=True, save_weights_only=True,
            initial_value_threshold=best,  # fine-tuning must beat the head alone to be kept
        ),  # fmt: skip
        keras.callbacks.CSVLogger(paths["history_csv"], append=True),
    ]
    if cfg.early_stopping_patience:
        callbacks.append(keras.callbacks.EarlyStopping(monitor=cfg.monitor, patience=cfg.early_stopping_patience))
    before = model.get_weights()
    with reading_records(records_dir, spec, "train", "val"):
        model.fit(train_ds, validation_data=val_ds, initial_epoch=done, epochs=done + cfg.fine_tune_epochs,
                  verbose=verbose, callbacks=callbacks, shuffle=False)  # fmt: skip
    if os.path.exists(checkpoint):
        model.load_weights(checkpoint)
    else:
        logger.info("fine-tuning never beat the head alone on %s: keeping the head's weights", cfg.monitor)
        model.set_weights(before)


def _worker_datasets(
    records_dir: str, spec: DatasetSpec, cfg: TrainConfig, strategy: tf.distribute.Strategy, cache_dir: str
) -> tuple[Any, Any]:
    """This worker's parts of train (repeated: the steps are counted) and val, as distributed datasets.

    Raises:
        VidseqError: if ``train.batch_size`` does not split evenly over the replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise VidseqError(
            f"train.batch_size {cfg.batch_size} does not split over the {replicas} replicas of the workers: "
            f"make it a multiple of {replicas}"
        )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF  # sharded here

    def train_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return make_dataset(
            records_dir, "train", spec, context.get_per_replica_batch_size(cfg.batch_size), training=True,
            augment=cfg.augment, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, cache=cfg.cache,
            cache_dir=cache_dir, shard=(context.num_input_pipelines, context.input_pipeline_id), repeat=True,
        ).with_options(options)  # fmt: skip

    def val_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = make_dataset(
            records_dir, "val", spec, context.get_per_replica_batch_size(cfg.batch_size), cache=cfg.cache,
            cache_dir=cache_dir, shard=(context.num_input_pipelines, context.input_pipeline_id),
        )  # fmt: skip
        # an unknown length: validation ends when every worker's part has ended (parts differ by a clip)
        return ds.filter(lambda *_: True).with_options(options)

    return strategy.distribute_datasets_from_function(train_fn), strategy.distribute_datasets_from_function(val_fn)


def _follow_chief(chief: dict[str, str], paths: dict[str, str], fingerprint: dict[str, Any]) -> bool:
    """A non-chief worker's resume: a copy of the chief's backup when it is of this model and data."""
    backup = chief["backup"]
    try:
        with open(chief["resume"], encoding="utf-8") as handle:
            same = json.load(handle) == json.loads(json.dumps(fingerprint))
    except (OSError, ValueError):
        same = False
    if not (same and os.path.isdir(backup) and os.listdir(backup)):
        return False
    shutil.rmtree(paths["backup"], ignore_errors=True)
    shutil.copytree(backup, paths["backup"])
    logger.info("resuming from the chief's backup %s", backup)
    return True


def _backup_epoch(backup_dir: str) -> int:
    """The epoch a Keras backup resumes at (-1 without one)."""
    try:
        with open(os.path.join(backup_dir, "training_metadata.json"), encoding="utf-8") as handle:
            return int(json.load(handle)["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def make_callbacks(paths: dict[str, str], cfg: TrainConfig, resuming: bool) -> list[keras.callbacks.Callback]:
    """Best-weights checkpoint, early stopping, NaN guard, CSV log and the resumable backup.

    The backup comes last, so that an epoch it records is already in the log and checkpoint.
    """
    threshold = _best_logged(paths["history_csv"], cfg.monitor) if resuming else None
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.ModelCheckpoint(
            paths["best_weights"], monitor=cfg.monitor, save_best_only=True, save_weights_only=True,
            initial_value_threshold=threshold,  # the interrupted run's best still counts
        ),  # fmt: skip
    ]
    if cfg.early_stopping_patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=cfg.monitor, patience=cfg.early_stopping_patience, restore_best_weights=True
            )
        )
    return [
        *callbacks,
        keras.callbacks.CSVLogger(paths["history_csv"], append=resuming),
        keras.callbacks.BackupAndRestore(paths["backup"], double_checkpoint=True),
    ]


def write_outputs(result: TrainResult, monitor: str) -> None:
    """Writes the model, the dataset spec, history.json and the training curves."""
    save_model(result.model, result.paths["model"])  # reproducible bytes
    with open(result.paths["dataset"], "w", encoding="utf-8") as handle:
        handle.write(result.spec.to_json())
    summary = {
        "initial_epoch": result.initial_epoch,
        "best_epoch": result.best_epoch,
        "monitor": monitor,  # no wall time: the file is a DVC output and must not change between equal runs
        "history": result.history,
    }
    with open(result.paths["history_json"], "w", encoding="utf-8") as handle:
        json.dump(summary, handle, indent=2)
    plot_history(result.history, result.paths["curves"])


def _output_paths(output_dir: str, create: bool = True) -> dict[str, str]:
    if create:
        os.makedirs(output_dir, exist_ok=True)
    join = lambda name: os.path.join(output_dir, name)  # noqa: E731
    return {
        "model": join(MODEL_FILE),
        "dataset": join(DATASET_JSON),
        "history_json": join(HISTORY_JSON),
        "history_csv": join(HISTORY_CSV),
        "curves": join(CURVES_PNG),
        "backup": join(BACKUP_DIR),
        "best_weights": join(BEST_WEIGHTS),
        "resume": join(RESUME_JSON),
    }


def _can_resume(paths: dict[str, str], fingerprint: dict[str, Any]) -> bool:
    """Whether a backup of an interrupted run of the same model on the same data exists.

    A backup of another model or dataset cannot be restored: it is removed, with a warning.
    The fingerprint of this run is written for the next start.
    """
    backup = paths["backup"]
    resumable = os.path.isdir(backup) and bool(os.listdir(backup))
    if resumable:
        try:
            with open(paths["resume"], encoding="utf-8") as handle:
                resumable = json.load(handle) == json.loads(json.dumps(fingerprint))
        except (OSError, ValueError):
            resumable = False
        if resumable:
            logger.info("found the backup of an interrupted run in %s: resuming it", backup)
        else:
            logger.warning("%s holds a backup of another model or dataset: starting over", backup)
            shutil.rmtree(backup)
    with open(paths["resume"], "w", encoding="utf-8") as handle:
        json.dump(fingerprint, handle)
    return resumable


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)


def _read_csv(path: str) -> list[dict[str, str]]:
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _best_logged(path: str, monitor: str) -> float | None:
    """The best ``monitor`` value logged by an interrupted run (for ModelCheckpoint)."""
    values = [float(row[monitor]) for row in _read_csv(path) if row.get(monitor)]
    if not values:
        return None
    return max(values) if "accuracy" in monitor else min(values)


def _dedupe_history(path: str) -> dict[str, list[float]]:
    """Reads the CSV log, keeps the last row of each epoch (a resumed epoch is logged twice)."""
    rows = {int(row["epoch"]): row for row in _read_csv(path)}
    ordered = [rows[e] for e in sorted(rows)]
    keys = list(ordered[0]) if ordered else []
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(ordered)
    return {k: [int(r[k]) if k == "epoch" else float(r[k]) for r in ordered] for k in keys}


def _best_epoch(history: dict[str, list[float]], monitor: str) -> int:
    values = history.get(monitor)
    if not values:
        return len(history.get("epoch", [])) - 1
    best = max(values) if "accuracy" in monitor else min(values)
    return int(history["epoch"][values.index(best)])


def plot_history(history: dict[str, list[float]], path: str) -> None:
    """Writes loss and accuracy curves (train and validation) to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e + 1 for e in history.get("epoch", [])]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            if key in history:
                ax.plot(epochs, history[key], style, label=key)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
