"""Evaluation metrics: clip- and video-level scores of a trained model on a held-out split, and their reports.

Reports clip accuracy, top-k accuracy, video-level accuracy (clip probabilities averaged per
``video_id``, as mmaction2 and PySlowFast report), per-class precision/recall/F1 (of clips and of
videos), a confusion matrix, and a temporal-order check: accuracy when each clip's frames are
shuffled in time (seeded) and when they are reversed. A model that uses motion loses accuracy
on shuffled frames; on classes that are time-reversals of each other (left/right, zoom in/out)
it falls towards 0 on reversed frames.

What a number is worth on a small split is reported beside it: the majority baseline (the
share of the split's videos in its commonest class: what always answering that class scores),
balanced accuracy (the mean of the per-class recalls, which that answer holds at 1/classes),
and a 95 % Wilson score interval for video accuracy (a proportion of ``videos`` trials). When
the video accuracy, or the interval's lower bound, does not rise above the majority baseline,
:func:`baseline_warning` says so (a warning; the evaluation still succeeds).

Writes into the output directory ``metrics.json`` (flat keys, ``dvc metrics show``),
``predictions.csv`` (one ``video_id,actual,predicted,confidence`` row per clip: the
``dvc plots`` confusion template), ``confusion_matrix.csv``, ``confusion_matrix.png`` and
``per_class.csv`` (clip and video scores per class; names in :mod:`training.artifacts`). The
metric logic is plain numpy, in the functions below; the stage entry point is
``python -m training.evaluate``. No MLflow here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipeline import records
from pipeline.records import ContractError, DatasetSpec
from training.artifacts import CONFUSION_CSV, CONFUSION_PNG, METRICS_JSON, PER_CLASS_CSV, PREDICTIONS_CSV, model_files
from vidseq.params import EvaluateConfig

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- metrics (numpy)


def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Fraction of rows whose arg-max probability is the label."""
    return float(np.mean(np.argmax(probs, axis=1) == labels)) if len(labels) else float("nan")


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` most probable classes."""
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1))) if len(labels) else float("nan")


def video_level(
    probs: np.ndarray, labels: np.ndarray, video_ids: Sequence[str]
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Averages clip probabilities per video.

    Returns:
        ``(ids, video_labels, video_probs)``, videos in order of first appearance.

    Raises:
        ValueError: if the clips of one video carry different labels.
    """
    order: dict[str, list[int]] = {}
    for i, vid in enumerate(video_ids):
        order.setdefault(vid, []).append(i)
    ids = list(order)
    video_probs = np.stack([probs[rows].mean(axis=0) for rows in order.values()]) if ids else probs[:0]
    video_labels = []
    for vid, rows in order.items():
        found = set(labels[rows].tolist())
        if len(found) != 1:
            raise ValueError(f"video {vid!r} has clips with different labels {sorted(found)}")
        video_labels.append(found.pop())
    return ids, np.asarray(video_labels, dtype=np.int64), video_probs


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``cm[actual, predicted]`` counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix (0 where undefined)."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> float:
    """The mean recall over the classes present in ``labels`` (scikit-learn's ``balanced_accuracy_score``)."""
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else float("nan")


def majority_baseline(labels: np.ndarray, num_classes: int) -> tuple[float, int]:
    """``(share, class index)`` of the commonest class of ``labels`` (the first such class on a tie).

    The accuracy of always answering that class: what a model must beat to have learnt anything
    beyond the class balance.
    """
    if not len(labels):
        return float("nan"), 0
    counts = np.bincount(labels, minlength=num_classes)
    best = int(np.argmax(counts))
    return float(counts[best] / len(labels)), best


WILSON_Z = 1.959963984540054  # the standard normal's 97.5 % quantile: a two-sided 95 % interval


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % by default); ``(nan, nan)`` for no trials.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or ``trials``
    successes: 64 of 64 videos right gives 0.944-1.0, not 1.0-1.0.
    """
    if trials <= 0:
        return float("nan"), float("nan")
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def baseline_warning(metrics: Mapping[str, Any], split: str = "test") -> str | None:
    """A sentence when the video accuracy does not beat the majority baseline, else ``None``.

    The model does not beat the baseline when its video accuracy is at or below it, and is not
    shown to beat it when the 95 % interval's lower bound is at or below it; each case has its own
    sentence. Pure; reads the keys :func:`compute_metrics` writes (``None`` when they are missing,
    e.g. an older metrics.json).
    """
    try:
        value, base = float(metrics["video_accuracy"]), float(metrics["majority_baseline"])
        low, high = float(metrics["video_accuracy_ci_low"]), float(metrics["video_accuracy_ci_high"])
        videos = int(metrics["videos"])
    except (KeyError, TypeError, ValueError):
        return None
    always = f"always answering {metrics['majority_class']!r}" if metrics.get("majority_class") else "the commonest class"
    baseline = f"the majority baseline {base:.3f} ({always} on the {videos} {split} videos)"
    if value <= base:
        return (f"video accuracy {value:.3f} does not beat {baseline}: the model has learnt nothing the class "
                "balance does not give")  # fmt: skip
    if low <= base:
        return (f"video accuracy {value:.3f} is above {baseline}, but its 95 % interval {low:.3f}-{high:.3f} "
                "reaches down to the baseline: not shown to beat it (more test videos, or k-fold, would tell)")  # fmt: skip
    return None


def shuffle_time(clips: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permutes the frames of each clip ``(batch, T, ...)`` in time, independently per clip."""
    order = np.argsort(rng.random(clips.shape[:2]), axis=1)
    return clips[np.arange(clips.shape[0])[:, None], order]


def compute_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    video_ids: Sequence[str],
    classes: Sequence[str],
    top_k: int = 2,
    shuffled_probs: np.ndarray | None = None,
    reversed_probs: np.ndarray | None = None,
) -> dict[str, float | int | str]:
    """All metrics as one flat dict (``dvc metrics show`` and MLflow take it as is).

    Numbers, and one string: ``majority_class``, the class the majority baseline answers.
    Keys without a level are of clips; ``video_*`` and ``majority_*`` are of videos.
    """
    num_classes = len(classes)
    predicted = np.argmax(probs, axis=1)
    cm = confusion_matrix(labels, predicted, num_classes)
    scores = per_class_scores(cm)
    _, video_labels, video_probs = video_level(probs, labels, video_ids)
    video_predicted = np.argmax(video_probs, axis=1) if len(video_labels) else video_labels
    video_scores = per_class_scores(confusion_matrix(video_labels, video_predicted, num_classes))
    video_right = int(np.sum(video_predicted == video_labels))
    low, high = wilson_interval(video_right, len(video_labels))
    base, base_class = majority_baseline(video_labels, num_classes)
    eps = 1e-7
    metrics: dict[str, float | int | str] = {
        "accuracy": accuracy(labels, probs),
        f"top_{min(top_k, num_classes)}_accuracy": top_k_accuracy(labels, probs, top_k),
        "video_accuracy": accuracy(video_labels, video_probs),
        "video_accuracy_ci_low": low,
        "video_accuracy_ci_high": high,
        "majority_baseline": base,
        "majority_class": classes[base_class],
        "video_balanced_accuracy": balanced_accuracy(video_labels, video_predicted, num_classes),
        "balanced_accuracy": balanced_accuracy(labels, predicted, num_classes),
        "loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)))),
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
        "video_macro_f1": float(video_scores["f1"].mean()),
        "clips": int(len(labels)),
        "videos": int(len(video_labels)),
    }
    if shuffled_probs is not None:
        metrics["shuffled_accuracy"] = accuracy(labels, shuffled_probs)
        metrics["shuffled_video_accuracy"] = accuracy(video_labels, video_level(shuffled_probs, labels, video_ids)[2])
    if reversed_probs is not None:
        metrics["reversed_accuracy"] = accuracy(labels, reversed_probs)
    for i, name in enumerate(classes):
        for key in ("precision", "recall", "f1"):
            metrics[f"{key}_{name}"] = float(scores[key][i])
    for i, name in enumerate(classes):
        for key in ("precision", "recall", "f1"):
            metrics[f"video_{key}_{name}"] = float(video_scores[key][i])
        metrics[f"video_support_{name}"] = int(video_scores["support"][i])
    return metrics


# --------------------------------------------------------------------------- the stage


@dataclasses.dataclass
class EvalResult:
    """What :func:`evaluate` produced: ``metrics`` (flat) and ``paths`` of the files written."""

    metrics: dict[str, float | int | str]
    paths: dict[str, str]


def load_trained(model_dir: str) -> tuple[Any, DatasetSpec]:
    """Loads ``model.keras`` and the ``dataset.json`` it was trained on from ``model_dir``."""
    from training.model import load_keras_model

    model_path, _ = model_files(model_dir)
    return load_keras_model(model_path), records.read_spec(model_dir)


def check_same_classes(model_spec: DatasetSpec, records_spec: DatasetSpec) -> None:
    """Raises ContractError unless the model was trained on the records' class list."""
    if tuple(model_spec.classes) != tuple(records_spec.classes):
        raise ContractError(
            f"the model was trained on classes {list(model_spec.classes)} but the records have "
            f"{list(records_spec.classes)}: evaluate on records made with the same classes or retrain"
        )


def predict_split(
    model, records_dir: str, spec: DatasetSpec, cfg: EvaluateConfig, feature_cache: str | None = None
) -> dict[str, np.ndarray]:
    """Runs the model over a split: as recorded, frames shuffled in time, frames reversed.

    A model with a pretrained per-frame backbone (:func:`training.model.split_model`) runs its
    backbone once per frame: the head then sees the features as recorded, shuffled and reversed
    in time, which is what the whole model computes on shuffled and reversed frames; the
    features as recorded come from ``feature_cache`` (``train.feature_cache``) where training or
    an earlier evaluation computed them with the same weights (:mod:`training.features`). When the
    backbone sees frame differences (``model.temporal_input``), shuffled and reversed clips have
    other differences: their features are computed from the shuffled and reversed frames.

    Returns:
        ``{"labels", "video_ids", "probs", "shuffled_probs", "reversed_probs"}`` arrays.
    """
    from training.data import check_compatible, make_dataset
    from training.model import per_frame_features, split_model
    from training.shards import reading_records

    ds = make_dataset(records_dir, cfg.split, spec, cfg.batch_size, with_video_id=True)
    check_compatible(model, ds, spec)
    rng = np.random.default_rng(cfg.shuffle_seed)
    parts = split_model(model)
    if parts is not None:
        from training.features import compute_features, split_features

        feature_model, head = parts
        predict = lambda x: np.concatenate([  # noqa: E731
            np.asarray(head.predict_on_batch(x[i : i + cfg.batch_size])) for i in range(0, len(x), cfg.batch_size)
        ])
        found = split_features(records_dir, cfg.split, spec, feature_model, feature_cache)
        features = found["features"]
        if per_frame_features(feature_model):
            shuffled, reversed_ = shuffle_time(features, rng), features[:, ::-1]
        else:
            changed = compute_features(
                records_dir, cfg.split, spec, feature_model,
                variants={"shuffled": lambda clips: shuffle_time(clips, rng), "reversed": lambda clips: clips[:, ::-1]},
            )  # fmt: skip
            shuffled, reversed_ = changed["shuffled"], changed["reversed"]
        return {
            "labels": found["labels"].astype(np.int64),
            "video_ids": found["video_ids"],
            "probs": predict(features),
            "shuffled_probs": predict(shuffled),
            "reversed_probs": predict(reversed_),
        }
    keys = ("labels", "video_ids", "probs", "shuffled_probs", "reversed_probs")
    out: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with reading_records(records_dir, spec, cfg.split):  # a damaged shard: one error naming it
        for clips, labels, video_ids in ds.as_numpy_iterator():
            out["labels"].append(labels)
            out["video_ids"].append(np.array([v.decode("utf-8") for v in video_ids], dtype=object))
            out["probs"].append(np.asarray(model.predict_on_batch(clips)))
            out["shuffled_probs"].append(np.asarray(model.predict_on_batch(shuffle_time(clips, rng))))
            out["reversed_probs"].append(np.asarray(model.predict_on_batch(clips[:, ::-1])))
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(
    records_dir: str, model_dir: str, output_dir: str, cfg: EvaluateConfig, feature_cache: str | None = None
) -> EvalResult:
    """Evaluates the model in ``model_dir`` on ``cfg.split`` of ``records_dir``; writes reports.

    ``feature_cache``: ``train.feature_cache``, for a model with a frozen pretrained backbone
    (see :func:`predict_split`).

    Raises:
        ContractError: if the records' clip shape or classes differ from the model's.
        EmptySplitError: if the split has no clips.
        DamagedRecordsError: if a shard of the split is corrupt or truncated (names file and record).
    """
    model, model_spec = load_trained(model_dir)
    spec = records.read_spec(records_dir)
    check_same_classes(model_spec, spec)
    pred = predict_split(model, records_dir, spec, cfg, feature_cache)
    metrics = compute_metrics(
        pred["labels"], pred["probs"], list(pred["video_ids"]), spec.classes, cfg.top_k,
        pred["shuffled_probs"], pred["reversed_probs"],
    )  # fmt: skip
    paths = write_reports(output_dir, metrics, pred, spec.classes, split=cfg.split)
    logger.info(
        "%s: video accuracy %.3f (95 %% interval %.3f-%.3f, %d videos), majority baseline %.3f (%s), "
        "balanced video accuracy %.3f, clip accuracy %.3f, shuffled-frames accuracy %.3f",
        cfg.split, metrics["video_accuracy"], metrics["video_accuracy_ci_low"], metrics["video_accuracy_ci_high"],
        metrics["videos"], metrics["majority_baseline"], metrics["majority_class"],
        metrics["video_balanced_accuracy"], metrics["accuracy"], metrics["shuffled_accuracy"],
    )  # fmt: skip
    warning = baseline_warning(metrics, cfg.split)
    if warning:
        logger.warning("%s", warning)
    return EvalResult(metrics, paths)


def write_reports(
    output_dir: str, metrics: dict, pred: dict[str, np.ndarray], classes: Sequence[str], *, split: str = "test"
) -> dict[str, str]:
    """Writes metrics.json, predictions.csv, confusion matrix CSV/PNG and per_class.csv (of ``split``)."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {k: os.path.join(output_dir, v) for k, v in (
        ("metrics", METRICS_JSON), ("predictions", PREDICTIONS_CSV), ("confusion_csv", CONFUSION_CSV),
        ("confusion_png", CONFUSION_PNG), ("per_class", PER_CLASS_CSV))}  # fmt: skip
    with open(paths["metrics"], "w", encoding="utf-8") as handle:
        json.dump(metrics, handle, indent=2)
    predicted = np.argmax(pred["probs"], axis=1)
    with open(paths["predictions"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "actual", "predicted", "confidence"])
        for vid, actual, guess, p in zip(pred["video_ids"], pred["labels"], predicted, pred["probs"]):
            writer.writerow([vid, classes[actual], classes[guess], f"{p[guess]:.4f}"])
    cm = confusion_matrix(pred["labels"], predicted, len(classes))
    with open(paths["confusion_csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["actual\\predicted", *classes])
        writer.writerows([name, *row] for name, row in zip(classes, cm.tolist()))
    scores = per_class_scores(cm)
    _, video_labels, video_probs = video_level(pred["probs"], pred["labels"], list(pred["video_ids"]))
    video_scores = per_class_scores(confusion_matrix(video_labels, np.argmax(video_probs, axis=1), len(classes)))
    with open(paths["per_class"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "precision", "recall", "f1", "support",
                         "video_precision", "video_recall", "video_f1", "video_support"])  # fmt: skip
        for i, name in enumerate(classes):
            row = [name]
            for level in (scores, video_scores):
                row += [*(f"{level[k][i]:.4f}" for k in ("precision", "recall", "f1")), int(level["support"][i])]
            writer.writerow(row)
    title = confusion_title("clip", split, metrics["accuracy"], int(cm.sum()))
    plot_confusion(cm, classes, paths["confusion_png"], title=title)
    return paths


def confusion_title(level: str, split: str, accuracy_value: float, count: int) -> str:
    """``Confusion matrix: 24 test clips, clip accuracy 0.917``: what the picture counts, on which split."""
    return f"Confusion matrix: {count} {split} {level}s, {level} accuracy {accuracy_value:.3f}"


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str, *, title: str | None = None) -> None:
    """Writes ``cm[actual, predicted]`` as a PNG heat map: ``actual`` on x, ``predicted`` on y, as ``dvc plots`` draws it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.0 + 0.7 * len(classes)
    fig, ax = plt.subplots(figsize=(max(size + 1, 5.5), max(size, 4.5)))
    image = ax.imshow(cm.T, cmap="Blues")  # rows of the image: predicted (first class on top), columns: actual
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    for (actual, predicted), count in np.ndenumerate(cm):
        ax.text(actual, predicted, str(count), ha="center", va="center",
                color="white" if count > cm.max() / 2 else "black")  # fmt: skip
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
