"""Evaluation stage: clip- and video-level metrics of a trained model on a held-out split.

``python -m training.evaluate --records DIR --model DIR --output DIR [--params params.yaml]``

Composes :func:`training.metrics.evaluate` (metrics.json, predictions, confusion matrix,
per-class scores in the output folder) with MLflow: the metrics and reports go into the
training run when the model folder has one (an untracked model is backfilled by register).
"""

from __future__ import annotations

import argparse
import sys

from pipeline import records
from training import artifacts
from vidseq import cli
from vidseq.params import DEFAULT_PARAMS, Params

HEADLINE = ("accuracy", "video_accuracy", "shuffled_accuracy", "reversed_accuracy", "macro_f1", "chance")


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
    from training.metrics import evaluate
    from training.tracking import runs

    result = evaluate(records_dir, args.model, args.output, params.evaluate)
    if runs.has_run_file(args.model):  # continue the training run; untracked models are backfilled by register
        runs.track_evaluation(
            args.model, result.paths["metrics"], params={"evaluate": params.evaluate.as_dict()},
            records_dir=records_dir, split=params.evaluate.split,
        )  # fmt: skip
    print(" ".join(f"{k}={result.metrics[k]:.4f}" for k in HEADLINE if k in result.metrics))


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
