"""``make ui``: MLflow's UI on the project's store, with the link that opens the experiment on its runs.

``python -m training.ui [--host 127.0.0.1] [--port 5000] [--params params.yaml]``

The store is the stages' (``MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db``); a repository moved
with its store gets its artifact paths repaired first (:mod:`training.tracking.relocation`). It
prints the experiment's page in the model-training view (MLflow 3.17's UI starts on GenAI unless
the URL says otherwise: :func:`training.tracking.runs.experiment_url`) and the registry's, then
becomes ``mlflow ui`` (same process: Ctrl-C stops it; the deprecation note each of its workers
prints about MLflow's own use of Starlette is off unless ``PYTHONWARNINGS`` is set). With a
tracking server it only says where that server's UI is. It never creates a store or an experiment.
"""

from __future__ import annotations

import argparse
import os
import sys

from vidseq import cli
from vidseq.errors import VidseqError
from vidseq.params import DEFAULT_PARAMS, Params

DEFAULT_PORT = 5000
STARLETTE_NOTE = "ignore:starlette.middleware.wsgi is deprecated"  # mlflow/server/fastapi_app.py, every worker


def mlflow_ui_command(uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command line for the store ``uri``."""
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--backend-store-uri", uri]


def links(uri: str, experiment_name: str, base_url: str) -> list[str]:
    """What to open: the experiment's runs (model-training view) and the registry; the UI's root if no run yet.

    The experiment is looked up in a sqlite store only (another database may be slow to answer or
    down, which ``mlflow ui`` then reports itself).
    """
    import mlflow

    from training.tracking.runs import experiment_url, sqlite_path

    database = sqlite_path(uri)
    if database is None:
        return [f"MLflow UI: {base_url}  (an experiment opens on its runs with ?workflowType=machine_learning "
                "after its page's address)"]  # fmt: skip
    if not database.is_file():
        return [f"MLflow UI: {base_url}  (no store yet at {uri}: `make demo` or `dvc repro` makes one)"]
    experiment = mlflow.MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment_name)
    if experiment is None:
        return [f"MLflow UI: {base_url}  (no experiment {experiment_name!r} yet: `make demo` or `dvc repro` runs one)"]
    return [
        f"MLflow UI, the runs of {experiment_name!r}: {experiment_url(base_url, experiment.experiment_id)}",
        f"  the model registry: {base_url}/#/models",
    ]


def port_number(text: str, source: str) -> int:
    """``text`` as a TCP port; :class:`VidseqError` naming ``source`` otherwise."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise VidseqError(f"{source}={text} is not a port: give a number from 1 to 65535 (default {DEFAULT_PORT})")
    return port


def _run(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.ui", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", help=f"port (default: $PORT or {DEFAULT_PORT})")
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="params file (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the links and the mlflow ui command, start nothing")
    args = parser.parse_args(argv)
    if args.port is not None:
        port = port_number(args.port, "--port")
    else:
        port = port_number(os.environ["PORT"], "PORT") if os.environ.get("PORT") else DEFAULT_PORT
    params = Params.load(args.params)
    from training.tracking.runs import open_store, tracking_uri

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        print(f"The tracking server serves the UI: open {uri}")
        return
    uri = open_store()  # a moved repository's store: artifact paths repaired before the UI reads them
    for line in links(uri, params.mlflow.experiment_name, f"http://{args.host}:{port}"):
        print(line, flush=True)
    command = mlflow_ui_command(uri, args.host, port)
    if args.dry_run:
        print(" ".join(command))
        return
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", STARLETTE_NOTE)
    try:
        os.execve(command[0], command, env)
    except OSError as exc:
        raise VidseqError(f"cannot start mlflow ui ({' '.join(command)}): {exc.strerror}") from exc


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
