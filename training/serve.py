"""Serving CLI: ``mlflow models serve`` on a private copy of the model, so the store is only read.

``python -m training.serve [-m MODEL_URI] [--params params.yaml] [mlflow models serve flags...]``

MLflow's own ``mlflow models serve -m models:/...`` writes a ``registered_model_meta`` file into
the model's folder in a local store, which fails on a read-only store (a mounted volume, a
shared disk). This command downloads the model (default: the champion,
``models:/<register.model_name>@champion``) into a temporary folder, serves that folder with
``mlflow models serve --env-manager local`` and every other flag given (``--host``, ``--port``,
``--workers``, ``--timeout``), and removes the copy when the server stops. The limits of
:mod:`training.limits` apply as with ``mlflow models serve`` (``VIDSEQ_*`` variables).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from vidseq import cli
from vidseq.errors import VidseqError
from vidseq.params import DEFAULT_PARAMS, Params

logger = logging.getLogger(__name__)


def download_model(uri: str, destination: str) -> str:
    """Copies the MLflow model at ``uri`` into ``destination``; returns the model folder.

    Raises:
        VidseqError: naming the URI and the store when MLflow cannot resolve or read it.
    """
    import mlflow

    from training.tracking.runs import open_store, tracking_uri

    open_store()
    try:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=destination)
    except Exception as exc:  # MLflow and the artifact stores raise many types for an unknown model
        text = str(getattr(exc, "message", exc)).strip()
        raise VidseqError(
            f"cannot download {uri} from {tracking_uri()}: {text.splitlines()[0] if text else type(exc).__name__}"
        ) from exc


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.serve", description=__doc__.splitlines()[0],
        epilog="Other flags go to mlflow models serve (e.g. --host 127.0.0.1 --port 5001 --workers 2).",
    )  # fmt: skip
    parser.add_argument("-m", "--model-uri", dest="model", help="MLflow model URI (default: the registered champion)")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file for register.model_name")
    args, serve_flags = parser.parse_known_args(argv)
    uri = args.model or Params.load(args.params).register.champion_uri
    scratch = tempfile.mkdtemp(prefix="vidseq-serve-")
    try:
        model_dir = download_model(uri, scratch)
        mlflow_cli = os.path.join(os.path.dirname(sys.executable), "mlflow")
        command = [mlflow_cli if os.path.exists(mlflow_cli) else "mlflow", "models", "serve", "-m", model_dir,
                   "--env-manager", "local", *serve_flags]  # fmt: skip
        logger.info("serving %s from a private copy in %s", uri, model_dir)
        server = subprocess.Popen(command)
        stop = lambda signum, _frame: server.send_signal(signum)  # noqa: E731 - the server shuts down cleanly
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        return server.wait()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
