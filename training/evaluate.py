"""Evaluation stage: clip- and video-level metrics of a trained model on a held-out split.

``python -m training.evaluate --records DIR --model DIR --output DIR [--params params.yaml]``

Composes :func:`training.metrics.evaluate` (metrics.json, predictions, confusion matrix,
per-class scores in the output folder; a warning when the video accuracy does not beat the
majority baseline) with MLflow: the metrics and reports go into the
training run when the model folder has one (an untracked model is backfilled by register).
"""

from __future__ import annotations

import argparse
import sys

from pipeline import records
from training import artifacts
from vidseq import cli
from vidseq.params import DEFAULT_PARAMS, Params

HEADLINE = (
    "video_accuracy", "video_accuracy_ci_low", "video_accuracy_ci_high", "majority_baseline", "majority_class",
    "video_balanced_accuracy", "accuracy", "shuffled_accuracy", "reversed_accuracy", "macro_f1", "videos",
)  # fmt: skip


def headline(metrics: dict) -> str:
    """The printed line: ``video_accuracy=0.6250 video_accuracy_ci_low=0.5026 ... majority_class=noFight ...``."""
    def shown(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={shown(metrics[k])}" for k in HEADLINE if k in metrics)


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--records", help="records directory (default: params data.records_dir)")
    parser.add_argument("--model", default=artifacts.MODELS_DIR, help="training output directory (default: %(default)s)")
    parser.add_argument("--output", default=artifacts.REPORTS_DIR, help="reports directory (default: %(default)s)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    params = Params.load(args.params)
    records_dir = args.records or params.data.records_dir
    split = params.evaluate.split
    records.require_splits(
        records.read_spec(records_dir), (split,), records_dir, f"evaluate.split is {split}",
        "set evaluate.split to a split the records hold",
    )  # before TensorFlow is imported
    from training.metrics import baseline_warning, evaluate
    from training.tracking import runs

    result = evaluate(records_dir, args.model, args.output, params.evaluate, params.train.feature_cache)
    if runs.has_run_file(args.model):  # continue the training run; untracked models are backfilled by register
        runs.track_evaluation(
            args.model, result.paths["metrics"], params={"evaluate": params.evaluate.as_dict()},
            records_dir=records_dir, split=params.evaluate.split,
            warning=baseline_warning(result.metrics, params.evaluate.split),
        )  # fmt: skip
    print(headline(result.metrics))


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
