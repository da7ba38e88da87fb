"""Training stage: fits the CNN-LSTM on the records' train split and logs the run to MLflow.

``python -m training.train --records DIR --output DIR [--params params.yaml] [--summary] [--no-track]``

Records may be local, on ``s3://`` (the AWS variables) or ``gs://`` (Google's default credentials).
With a ``TF_CONFIG`` that names several workers, every worker runs this same command and they
train together (MultiWorkerMirroredStrategy); only the chief writes ``--output`` and logs to MLflow.

Composes the Keras core (:func:`training.fit.train`: model, history, curves and resume in the
output folder) with MLflow tracking (:func:`training.tracking.runs.track_training`: starts the
run that evaluate and register continue; its id goes to ``OUTPUT/mlflow_run.json``).
"""

from __future__ import annotations

import argparse
import sys

from pipeline import records
from training import artifacts
from vidseq import cli
from vidseq.params import DEFAULT_PARAMS, Params


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--records", help="records directory (default: params data.records_dir)")
    parser.add_argument("--output", default=artifacts.MODELS_DIR, help="output directory (default: %(default)s)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--summary", action="store_true", help="print the shape through each layer and exit")
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras fit verbosity")
    parser.add_argument(
        "--no-track", dest="track", action="store_false",
        help="do not log to MLflow (default: start the pipeline run; its id goes to OUTPUT/mlflow_run.json)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    params = Params.load(args.params)
    records_dir = args.records or params.data.records_dir
    if args.summary:
        from training.model import summarize

        print(summarize(records.read_spec(records_dir), params.model))
        return
    records.require_splits(
        records.read_spec(records_dir), ("train", "val"), records_dir,
        "training needs clips in train (to fit) and val (early stopping and the kept weights)",
        "pass --records of records that hold both",
    )  # fmt: skip  # before TensorFlow is imported
    from training.fit import train

    result = train(records_dir, args.output, params.model, params.train, verbose=args.verbose)
    if not result.workers.chief:  # TF_CONFIG: the chief wrote the model and logs the run
        workers = result.workers
        print(f"{workers.task} of {workers.count} workers: trained with the chief, which wrote {args.output}")
        return
    if args.track:
        from training.tracking import runs

        run_id = runs.track_training(
            args.output, params.as_dict(), records_dir=records_dir, config=params.mlflow, model=result.model
        )
        print(f"MLflow run {run_id} ({runs.tracking_uri()})")
    history, best = result.history, result.best_epoch
    val_acc = history["val_accuracy"][history["epoch"].index(best)] if "val_accuracy" in history else float("nan")
    print(f"best epoch {best + 1}: val_accuracy {val_acc:.4f}; {result.seconds:.1f}s; model {result.paths['model']}")


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
