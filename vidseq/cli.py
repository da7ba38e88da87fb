"""The one CLI harness: runs a stage's ``main`` and maps errors to exit codes and one-line messages.

Every ``python -m ...`` entry point is ``main = cli.harness(_run, ...)`` around a function that
does the work and raises :class:`~vidseq.errors.VidseqError` for anything the user can fix::

    def _run(argv): ...            # parse flags, do the work, print the result
    main = cli.harness(_run)       # main(argv) -> exit code

``VidseqError`` -> ``error: <message>`` on stderr and its ``exit_code`` (2, or 1 for work that
failed); Ctrl-C -> 130; anything else propagates with its traceback (a bug).

A successful run prints nothing that looks like an error, so the harness also quiets what the
libraries say on every healthy run (:func:`quiet_libraries`): TensorFlow's C++ log on a machine
without an NVIDIA driver (``failed call to cuInit``: ``TF_CPP_MIN_LOG_LEVEL=3`` unless set; its
Abseil start-up lines, which ignore that variable, are held to it by :mod:`vidseq.native_log`),
MLflow's artifact download progress bars, its CloudPickle note and missing-input-example
warning (the served model takes a video, not a tensor example), and Beam's "No shards found to
finalize" for an empty split. Variables the user set are left as they are.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence

from vidseq import native_log
from vidseq.errors import VidseqError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"

QUIET_LOGGERS = {
    "apache_beam.io.filebasedsink": logging.ERROR,  # "No shards found to finalize": a split with no clips
}
DROPPED_LOG_MESSAGES = {
    "mlflow.pyfunc": ("Passing a Python object as `python_model`",),  # the CloudPickle note, on every log_model
}
IGNORED_WARNINGS = (r".*An input example was not provided when logging the model",)
NVIDIA_DRIVER = "/proc/driver/nvidia/version"  # present where a GPU can be used


def harness(run: Callable[[Sequence[str] | None], int | None], *, log_level: int = logging.INFO):
    """Wraps ``run(argv)`` into ``main(argv) -> int``.

    Args:
        run: does the work; returns an exit code or ``None`` (0).
        log_level: the root logging level while it runs.

    Returns:
        ``main(argv=None) -> int``.
    """

    @functools.wraps(run)
    def main(argv: Sequence[str] | None = None) -> int:
        logging.basicConfig(level=log_level, format=LOG_FORMAT)
        quiet_libraries()
        try:
            code = run(None if argv is None else list(argv))
        except VidseqError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        return 0 if code is None else code

    return main


class _DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of ``starts``."""

    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_libraries() -> None:
    """Quiets the libraries' messages that every healthy run would print (see the module docstring).

    Environment variables take effect in the libraries imported after this call (the stage
    mains import TensorFlow and MLflow inside ``run``) and in the processes they start.
    """
    if not os.path.exists(NVIDIA_DRIVER):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # cuInit's ERROR line on every CPU-only start
    native_log.install()  # TensorFlow's Abseil start-up lines ignore that variable: held to it at import
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for name, starts in DROPPED_LOG_MESSAGES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(starts))
    for message in IGNORED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line messages are joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
