"""Moving the local MLflow store with its repository: the store's artifact paths follow it to where it is now.

The default store is ``mlflow.db`` with its artifacts in ``mlruns/`` beside it
(:func:`training.tracking.runs.configure` creates the experiment with that artifact location).
MLflow's SQL store records every local artifact location as an absolute ``file://`` path (it
resolves relative ones when it writes them), in the experiment, every run, every logged model
and every model version. After ``mv repo elsewhere`` (or ``cp -r``), those paths still name the
old folder: the models, plots and registry versions of a moved repository cannot be opened, and
a copy would even write new runs' artifacts into the original's ``mlruns/``.

:func:`follow` repairs that the way ``git worktree repair`` does for worktrees: when the store's
own experiment says its ``mlruns/`` was ``<old>/mlruns`` while the database now sits in
``<new>`` and ``<new>/mlruns`` exists (the artifacts moved with it), every reference to
``<old>/mlruns`` in the database (plain or percent-encoded, in any text column, so every
MLflow table that stores a location is covered) becomes ``<new>/mlruns``, in one transaction,
under the store's lock. Nothing happens for other stores (a server, PostgreSQL), for a database
copied without its ``mlruns/`` (the old links still work) or for experiments whose artifacts
were put elsewhere on purpose. Every stage, ``predict``, ``serve`` and ``make ui`` call it
before MLflow opens the store.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import urllib.parse
from pathlib import Path

logger = logging.getLogger(__name__)

ARTIFACT_FOLDER = "mlruns"  # beside the database (training.tracking.runs._artifact_location)
_SKIPPED_TABLES = {"alembic_version"}


def artifact_root(database: Path) -> Path:
    """The artifact folder of the store in ``database``: ``mlruns`` beside it."""
    return database.resolve().parent / ARTIFACT_FOLDER


def recorded_roots(connection: sqlite3.Connection) -> set[str]:
    """The ``<folder>/mlruns`` paths the store's experiments were created with (``file://<folder>/mlruns``)."""
    roots = set()
    for (location,) in connection.execute("SELECT artifact_location FROM experiments"):
        parsed = urllib.parse.urlparse(location or "")
        if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
            continue
        path = urllib.parse.unquote(parsed.path).rstrip("/")
        if Path(path).name == ARTIFACT_FOLDER:
            roots.add(path)
    return roots


def _text_columns(connection: sqlite3.Connection) -> list[tuple[str, str]]:
    """``(table, column)`` for every text column of every table of the store."""
    found = []
    tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    for table in tables:
        if table in _SKIPPED_TABLES or table.startswith("sqlite_"):
            continue
        for column in connection.execute(f'PRAGMA table_info("{table}")'):
            name, declared = column[1], (column[2] or "").upper()
            if any(kind in declared for kind in ("CHAR", "TEXT", "CLOB")) or not declared:
                found.append((table, name))
    return found


def _rewrite(connection: sqlite3.Connection, old: str, new: str) -> int:
    """Replaces the folder ``old`` by ``new`` wherever a whole path starts with it; returns the rows changed.

    In a ``file://`` URI the path is percent-encoded (``Path.as_uri``), elsewhere it is plain
    (MLflow stores the default experiment's location as a bare path): each form gets ``new`` in
    its own form.
    """
    quoted_old, quoted_new = urllib.parse.quote(old), urllib.parse.quote(new)
    forms = "|".join(re.escape(form) for form in sorted({old, quoted_old}, key=len, reverse=True))
    pattern = re.compile(r"(?P<uri>file://(?:localhost)?)?(?P<path>" + forms + r")(?=/|$|[\"'\s?#])")

    def replace(match: re.Match) -> str:
        if match.group("uri"):
            return match.group("uri") + quoted_new
        return quoted_new if match.group("path") != old else new

    changed = 0
    for table, column in _text_columns(connection):
        rows = connection.execute(
            f'SELECT rowid, "{column}" FROM "{table}" WHERE instr("{column}", ?) > 0 OR instr("{column}", ?) > 0',
            (old, quoted_old),
        ).fetchall()
        for rowid, value in rows:
            if not isinstance(value, str):
                continue
            updated = pattern.sub(replace, value)
            if updated != value:
                connection.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = ?', (updated, rowid))
                changed += 1
    return changed


def follow(database: Path) -> dict[str, str | int] | None:
    """Points the store in ``database`` at the ``mlruns/`` beside it if it was moved; the change, or ``None``.

    Returns:
        ``{"from": old root, "to": new root, "rows": rows rewritten}`` when paths were rewritten.
    """
    if not database.is_file() or database.stat().st_size == 0:
        return None
    here = artifact_root(database)
    if not here.is_dir():
        return None  # the database moved without its artifacts: the old paths are the right ones
    connection = sqlite3.connect(database, timeout=60, isolation_level=None)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return None
        elsewhere = sorted(root for root in recorded_roots(connection) if root != str(here))
        if not elsewhere:
            return None
        connection.execute("BEGIN IMMEDIATE")
        try:
            rows = sum(_rewrite(connection, old, str(here)) for old in elsewhere)
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()
    logger.info("the MLflow store %s was moved: its artifact paths now point at %s (were %s; %d rows)",
                database, here, ", ".join(elsewhere), rows)  # fmt: skip
    return {"from": ", ".join(elsewhere), "to": str(here), "rows": rows}
