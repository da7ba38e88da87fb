"""A DVC remote round-trips: push from one checkout, a fresh clone pulls, and nothing needs to run again.

Two remotes, as in the README's "Team set-up": a folder (``dvc remote add -d shared /srv/dvc``) and
``s3://`` (``dvc-s3``) on moto's server on a loopback port. The pushing checkout is a copy of the
DVC-run repository (``orchestration_fixtures.copy_pipeline_repo``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from orchestration_fixtures import BIN, copy_pipeline_repo, run, tool_env
from servers import free_port, serve

DVC = str(BIN / "dvc")
BUCKET = "vidseq-dvc"


def dvc(path: Path, env: dict[str, str], *args: str) -> str:
    done = run([DVC, *args], path, env, timeout=600)
    return done.stdout + done.stderr


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file's hash, but the ones DVC does not track (``.dvcignore``: ``models/mlflow_run.json``)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "mlflow_run.json"
    }


@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """A checkout with both remotes committed in ``.dvc/config`` and everything pushed to both."""
    base = tmp_path_factory.mktemp("dvc-remote")
    path = copy_pipeline_repo(tmp_path_factory, base / "origin")
    port = free_port()
    env = {**tool_env(f"sqlite:///{base / 'mlflow.db'}"), "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, base / "moto.log"):
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=BUCKET)  # fmt: skip
        dvc(path, env, "remote", "add", "-d", "shared", str(base / "remote"))
        dvc(path, env, "remote", "add", "s3", f"s3://{BUCKET}/store")
        dvc(path, env, "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{port}")
        run(["git", "add", ".dvc/config", "dvc.lock"], path, env)
        run(["git", "commit", "-qm", "remotes"], path, env)
        pushed = {name: dvc(path, env, "push", "-r", name) for name in ("shared", "s3")}
        yield path, env, pushed


def test_push_sends_every_cached_output_to_both_remotes(origin):
    path, env, pushed = origin
    for name, out in pushed.items():
        assert "pushed" in out, out
        assert dvc(path, env, "status", "-c", "-r", name).strip() == f"Cache and remote '{name}' are in sync."


@pytest.mark.parametrize("remote", ["shared", "s3"])
def test_a_fresh_clone_pulls_what_was_pushed_and_is_up_to_date(origin, remote, tmp_path):
    path, env, _ = origin
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(path), str(clone)], tmp_path, env)
    assert not (clone / "models").exists() and not (clone / "data" / "records").exists()
    dvc(clone, env, "pull", "-r", remote)
    for folder in ("data/demo", "data/records", "models"):
        assert tree_digest(clone / folder) == tree_digest(path / folder), folder
    assert (clone / "reports" / "metrics.json").read_bytes() == (path / "reports" / "metrics.json").read_bytes()
    repro = dvc(clone, env, "repro")  # only the listing stage runs (it always looks at the videos): the same listing
    assert re.findall(r"Running stage '([^']+)'", repro) == ["listing"] and "Stage 'preprocess' didn't change" in repro
    assert dvc(clone, env, "status").split() == ["listing:", "always", "changed"]
    assert dvc(clone, env, "status", "-c", "-r", remote).strip() == f"Cache and remote '{remote}' are in sync."
