"""The one CLI harness: runs a stage's ``main`` and maps errors to exit codes and one-line messages.

Every ``python -m ...`` entry point is ``main = cli.harness(_run, ...)`` around a function that
does the work and raises :class:`~vidseq.errors.VidseqError` for anything the user can fix::

    def _run(argv): ...            # parse flags, do the work, print the result
    main = cli.harness(_run)       # main(argv) -> exit code

``VidseqError`` -> ``error: <message>`` on stderr and its ``exit_code`` (2, or 1 for work that
failed); Ctrl-C -> 130; anything else propagates with its traceback (a bug).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable, Sequence

from vidseq.errors import VidseqError

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


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


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (multi-line messages are joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())
