"""The project's error base: what a user can fix is a ``VidseqError``, everything else is a bug.

A ``VidseqError``'s message is one line that names the thing that is wrong and the fix; the
CLI harness (:mod:`vidseq.cli`) prints it as ``error: <message>`` and exits with the error's
``exit_code``: 2 for a user error (a wrong parameter, a missing file, mismatched shapes), 1
when the work ran but its result is not usable (too many videos failed, damaged records).
Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class VidseqError(Exception):
    """Something the user can fix; the message says what and how. Exit status 2."""

    exit_code = 2


class WorkFailedError(VidseqError):
    """The work ran but its result is not usable (e.g. too many videos failed). Exit status 1."""

    exit_code = 1


class MissingFileError(VidseqError, FileNotFoundError):
    """A file or folder that the user named, or that an earlier stage should have written, is missing."""
