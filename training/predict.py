"""Prediction CLI: classifies video files with a trained model, one JSON line per video.

``python -m training.predict VIDEO [VIDEO...] [--model REF] [--top-k K] [--params params.yaml]
[--max-pixels N] [--max-frames N] [--max-seconds S] [--decode-timeout S]``

``REF`` is a training output folder (``model.keras`` + ``dataset.json``), an MLflow model
folder, or an MLflow model URI; the default is the registered champion,
``models:/<register.model_name>@champion``, read from ``MLFLOW_TRACKING_URI`` or
``sqlite:///mlflow.db``; without a champion (no version passed the promotion gate) the error
says so, with the gate and what to use instead (``@challenger``, a version, the training
output folder). Videos are decoded and sampled exactly as the preprocessing did
(:mod:`training.classifier`) and the clip probabilities averaged. Each video prints
``{"video", "label", "probabilities", "clips"}`` (``top_k`` instead of ``probabilities``
with ``--top-k``); a video that cannot be read prints ``{"video", "error"}`` and the others
are still answered. Before the answers, one line on stderr says which model answers and on which
classes (``model models:/vidseq-cnn-lstm@champion (version 3): 6 classes: MoveDown, ...``), so a
champion of another dataset is seen at once. The per-video limits of :mod:`training.limits` apply (``VIDSEQ_*``
variables, overridden by the flags). An MLflow model is loaded through a temporary copy, so a
read-only store works. Exit status: 0 all classified, 1 some video failed, 2 bad model or usage.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any
from urllib.parse import urlparse

from training.limits import CLI_FLAGS, Limits
from vidseq import cli
from vidseq.errors import VidseqError
from vidseq.params import DEFAULT_PARAMS, ConfigError, Params, RegisterConfig

logger = logging.getLogger(__name__)

# URI schemes MLflow resolves to a model store (``models:/``, ``runs:/``, artifact stores).
MODEL_URI_SCHEMES = ("models", "runs", "file", "mlflow-artifacts", "s3", "gs", "wasbs", "abfss", "hdfs", "dbfs")


class ModelLoadError(VidseqError):
    """The model reference cannot be loaded as a video classifier; the message says why."""


def load_classifier(reference: str, register: RegisterConfig | None = None) -> Any:
    """Loads a :class:`training.classifier.VideoClassifier` from a folder or an MLflow URI.

    ``register`` (the ``register`` params) words the error for a ``models:/<name>@champion`` that
    does not exist: the gate no version passed, and what to predict with instead.

    Raises:
        ModelLoadError: for a missing folder, an unsupported URI, an unknown model or alias,
            a damaged ``model.keras``, or a model that is not a video classifier (e.g. the
            tensor-only ``keras_model``).
    """
    from training.artifacts import MODEL_FILE
    from training.classifier import VideoClassifier

    if os.path.isdir(reference):
        if os.path.exists(os.path.join(reference, MODEL_FILE)):
            return VideoClassifier.from_dir(reference)  # a damaged or mismatched model: its own VidseqError
        if os.path.exists(os.path.join(reference, "MLmodel")):
            return _load_mlflow(reference, register)
        raise ModelLoadError(f"{reference} holds neither {MODEL_FILE} + dataset.json nor an MLflow model (MLmodel)")
    if ":/" in reference:
        scheme = urlparse(reference).scheme.lower()
        if scheme not in MODEL_URI_SCHEMES:
            raise ModelLoadError(
                f"unsupported model URI {reference}: {scheme}: is not an MLflow model store; give a training "
                "output folder, an MLflow model folder or a URI such as models:/vidseq-cnn-lstm@champion, "
                "runs:/<run id>/video_classifier, file:///path or s3://bucket/path"
            )
        return _load_mlflow(reference, register)
    raise ModelLoadError(
        f"model {reference} not found: give a training output folder (model.keras + dataset.json), "
        "an MLflow model folder or a URI such as models:/vidseq-cnn-lstm@champion"
    )


def _missing_alias(uri: str, register: RegisterConfig | None) -> str | None:
    """For ``models:/<name>@<alias>`` that does not resolve: why, and what to use instead (else ``None``)."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    import mlflow

    from training.tracking.registry import missing_alias_reason

    name, alias = uri[len("models:/") :].rsplit("@", 1)
    try:
        if register is None or register.model_name != name:
            register = dataclasses.replace(register or RegisterConfig(), model_name=name)
        return missing_alias_reason(mlflow.MlflowClient(), name, alias, register)
    except Exception:  # noqa: BLE001 - the store failed while explaining (or an odd name): the load error says it
        logger.debug("explaining %s", uri, exc_info=True)
        return None


def _load_mlflow(uri: str, register: RegisterConfig | None = None) -> Any:
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.tracking.runs import open_store, tracking_uri

    open_store()
    try:
        # Into a private copy: loading a local registered model writes registered_model_meta
        # into the store's model folder, which fails on a read-only store.
        model = mlflow.pyfunc.load_model(uri, dst_path=_scratch_dir())
    except Exception as exc:  # MLflow, the artifact store and Keras each raise their own types
        logger.debug("loading %s", uri, exc_info=True)
        text = str(getattr(exc, "message", exc)).strip()
        message = _missing_alias(uri, register) or (text.splitlines()[0] if text else type(exc).__name__)
        raise ModelLoadError(f"cannot load {uri} from {tracking_uri()}: {message}") from exc
    try:
        classifier = getattr(model.unwrap_python_model(), "classifier", None)
    except MlflowException:  # another flavor, e.g. the tensor-only keras_model
        classifier = None
    if classifier is None:
        raise ModelLoadError(
            f"{uri} is not a video classifier (flavor {model.loader_module}): use the registered "
            "video_classifier model, e.g. models:/vidseq-cnn-lstm@champion"
        )
    return classifier


def _scratch_dir() -> str:
    """A temporary folder that lives as long as the process (the model's code is imported from it)."""
    path = tempfile.mkdtemp(prefix="vidseq-model-")
    atexit.register(shutil.rmtree, path, True)
    return path


def predict_video(classifier: Any, path: str, top_k: int | None = None) -> dict[str, Any]:
    """Classifies one video file.

    Returns:
        ``{"video", "label", "probabilities" | "top_k", "clips"}``, or ``{"video", "error"}``.
    """
    from pipeline.video import VideoError

    from training.video_input import check_local_file

    problem = check_local_file(path)
    if problem:
        return {"video": path, "error": f"open: {problem}"}
    try:
        result = classifier.classify(path, name=path)
    except VideoError as exc:
        return {"video": path, "error": f"{exc.stage}: {exc.reason}"}
    except OSError as exc:
        return {"video": path, "error": f"open: {exc.strerror or exc}: {path}"}
    line: dict[str, Any] = {"video": path, "label": result["label"]}
    if top_k:
        ranked = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:top_k]
        line["top_k"] = [{"label": label, "probability": p} for label, p in ranked]
    else:
        line["probabilities"] = result["probabilities"]
    line["clips"] = result["clips"]
    return line


def register_config(params_path: str | None) -> RegisterConfig:
    """The ``register`` section of ``params_path``.

    Without ``params_path``, ``params.yaml`` is read if it exists, else the defaults are used.
    """
    if params_path is None:
        if not os.path.exists(DEFAULT_PARAMS):
            return RegisterConfig()
        params_path = DEFAULT_PARAMS
    return Params.load(params_path).register


def default_model(params_path: str | None) -> str:
    """``models:/<register.model_name>@champion`` from ``params_path`` (see :func:`register_config`)."""
    return register_config(params_path).champion_uri


def describe_model(reference: str, classes: list[str]) -> str:
    """``model <reference>[ (version N)]: <n> classes: a, b, ...``; a ``models:/<name>@<alias>`` is resolved."""
    version = ""
    if reference.startswith("models:/") and "@" in reference:
        import mlflow
        from mlflow.exceptions import MlflowException

        name, alias = reference[len("models:/") :].rsplit("@", 1)
        try:
            version = f" (version {mlflow.MlflowClient().get_model_version_by_alias(name, alias).version})"
        except MlflowException:  # loaded a moment ago: only a concurrent change gets here
            logger.debug("resolving %s", reference, exc_info=True)
    return f"model {reference}{version}: {len(classes)} classes: {', '.join(classes)}"


def cli_limits(args: argparse.Namespace) -> Limits:
    """``VIDSEQ_*`` limits with the flags given on the command line on top.

    Raises:
        ConfigError: for a flag or variable that is not positive.
    """
    limits = Limits.load()
    given = {field: getattr(args, field) for field in CLI_FLAGS if getattr(args, field) is not None}
    for field, value in given.items():
        if value <= 0:
            raise ConfigError(f"{CLI_FLAGS[field]} must be positive, got {value}")
    return dataclasses.replace(limits, **given)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.predict", description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    parser.add_argument("--model", help="training output folder, MLflow model folder or URI (default: the champion)")
    parser.add_argument("--top-k", type=int, metavar="K", help="print the K most probable classes instead of all")
    parser.add_argument("--params", help="params file for register.model_name (default: params.yaml if present)")
    defaults = Limits()
    for field, flag in CLI_FLAGS.items():
        kind = int if isinstance(getattr(defaults, field), int) else float
        parser.add_argument(
            flag, dest=field, type=kind, metavar="N",
            help=f"per-video limit (default: VIDSEQ_{field.upper()} or {getattr(defaults, field)})",
        )  # fmt: skip
    args = parser.parse_args(argv)
    if args.top_k is not None and args.top_k < 1:
        parser.error(f"--top-k must be positive, got {args.top_k}")
    limits = cli_limits(args)
    register = register_config(args.params)
    reference = args.model or register.champion_uri
    classifier = load_classifier(reference, register)
    print(describe_model(reference, list(classifier.spec.classes)), file=sys.stderr, flush=True)
    classifier.limits, classifier.limit_names = limits, CLI_FLAGS
    failed = 0
    for path in args.videos:
        line = predict_video(classifier, path, args.top_k)
        failed += "error" in line
        print(json.dumps(line), flush=True)
    if failed:
        print(f"error: {failed} of {len(args.videos)} video(s) could not be classified", file=sys.stderr)
    return 1 if failed else 0


main = cli.harness(_run, log_level=logging.WARNING)


if __name__ == "__main__":
    sys.exit(main())
