"""Fitting the CNN-LSTM: optimiser, callbacks, resumable ``fit`` and the files it leaves.

:func:`train` fits a model on the records' train split, validating on ``val``, and writes into
the output folder (names in :mod:`training.artifacts`) ``model.keras`` (best weights on
validation), ``dataset.json`` (the spec it was trained on), ``history.json``, ``history.csv``
(one row per epoch, for ``dvc plots``) and ``training_curves.png``. A run that is killed
resumes from its last completed epoch when started again with the same output folder (Keras
``BackupAndRestore``; the backup lives in ``OUTPUT/backup`` until training succeeds).
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
import time
from typing import Any

import keras
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
from training.data import check_compatible, make_dataset
from training.model import build_model, save_model
from training.shards import count_clips, reading_records
from vidseq.errors import VidseqError
from vidseq.params import ModelConfig, TrainConfig

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
    """

    model: keras.Model
    spec: DatasetSpec
    history: dict[str, list[float]]
    initial_epoch: int
    best_epoch: int
    seconds: float
    paths: dict[str, str]


def select_strategy() -> tf.distribute.Strategy:
    """``MirroredStrategy`` when several GPUs are visible, else the default strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logger.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


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
    """
    keras.utils.set_random_seed(train_cfg.seed)
    tf.config.experimental.enable_op_determinism()  # same records + params -> the same model bytes (dvc.lock)
    spec = records.read_spec(records_dir)
    train_clips = count_clips(records_dir, "train", spec)
    count_clips(records_dir, "val", spec)
    steps_per_epoch = math.ceil(train_clips / train_cfg.batch_size)
    paths = _output_paths(output_dir)
    resuming = _can_resume(paths, {"model": model_cfg.as_dict(), "dataset": spec.to_dict()})
    if not resuming:
        _remove(paths["history_csv"], paths["best_weights"])
    os.makedirs(os.path.dirname(paths["best_weights"]), exist_ok=True)

    train_ds = make_dataset(
        records_dir, "train", spec, train_cfg.batch_size, training=True, augment=train_cfg.augment,
        seed=train_cfg.seed, shuffle_buffer=train_cfg.shuffle_buffer, cache=train_cfg.cache,
    )  # fmt: skip
    val_ds = make_dataset(records_dir, "val", spec, train_cfg.batch_size, cache=train_cfg.cache)

    mixed = configure_mixed_precision(train_cfg.mixed_precision)
    try:
        with select_strategy().scope():
            model = compile_model(build_model(spec, model_cfg), train_cfg, steps_per_epoch)
        check_compatible(model, train_ds, spec)
        first = _FirstEpoch()
        logger.info(
            "training %s on %d clips (%d steps/epoch) of %s for up to %d epochs",
            model.name, train_clips, steps_per_epoch, spec.clip_shape, train_cfg.epochs,
        )  # fmt: skip
        start = time.perf_counter()
        with reading_records(records_dir, spec, "train", "val"):  # a damaged shard: one error naming it
            model.fit(
                train_ds, validation_data=val_ds, epochs=train_cfg.epochs, verbose=verbose,
                callbacks=[first, *make_callbacks(paths, train_cfg, resuming)],
                shuffle=False,  # the dataset shuffles itself
            )  # fmt: skip
        seconds = time.perf_counter() - start
    finally:
        if mixed:
            keras.mixed_precision.set_global_policy("float32")

    history = _dedupe_history(paths["history_csv"])
    if any(math.isnan(v) for v in history.get("loss", [])):
        raise DivergedError(
            f"training diverged (loss NaN) at epoch {len(history['loss'])}: lower train.learning_rate"
        )
    if os.path.exists(paths["best_weights"]):  # best over the whole run, resumed epochs included
        model.load_weights(paths["best_weights"])
    initial_epoch = first.epoch if first.epoch is not None else len(history.get("epoch", []))
    result = TrainResult(model, spec, history, initial_epoch, _best_epoch(history, train_cfg.monitor), seconds, {
        k: paths[k] for k in ("model", "dataset", "history_json", "history_csv", "curves")
    })  # fmt: skip
    write_outputs(result, train_cfg.monitor)
    shutil.rmtree(os.path.dirname(paths["best_weights"]), ignore_errors=True)
    _remove(paths["resume"])
    logger.info("trained in %.1fs; best epoch %d; wrote %s", seconds, result.best_epoch + 1, output_dir)
    return result


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


def _output_paths(output_dir: str) -> dict[str, str]:
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
