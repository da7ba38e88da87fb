"""Registration stage: registers the trained model and moves ``@champion`` only through a gate.

``python -m training.register --model models --metrics reports/metrics.json --output reports/registry.json``
``[--params params.yaml]``

The gate and what lands in the registry: :mod:`training.tracking.registry`.
"""

from __future__ import annotations

import argparse
import os
import sys

from training import artifacts
from vidseq import cli
from vidseq.errors import VidseqError
from vidseq.params import DEFAULT_PARAMS, Params


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.register", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=artifacts.MODELS_DIR, help="training output folder (default: %(default)s)")
    parser.add_argument("--metrics", default=artifacts.report_path(artifacts.METRICS_JSON),
                        help="evaluation metrics (default: %(default)s)")  # fmt: skip
    parser.add_argument("--output", default=artifacts.report_path(artifacts.REGISTRY_JSON),
                        help="registry record (default: %(default)s)")  # fmt: skip
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    params = Params.load(args.params)
    if not os.path.isdir(args.model):
        raise VidseqError(
            f"model folder {args.model} not found: train first (python -m training.train --output {args.model})"
        )
    from training.tracking import registry

    record = registry.register(
        args.model, args.metrics, args.output, register_cfg=params.register, mlflow_cfg=params.mlflow, params=params
    )
    print(registry.describe(record))


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
