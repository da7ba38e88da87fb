"""Several workers: ``TF_CONFIG`` -> MultiWorkerMirroredStrategy, sharded input, chief-only writes, resume.

Two workers run as two processes on loopback ports, the same command each with its own
``TF_CONFIG``, as on a cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from servers import free_port
from training_fixtures import write_records

from pipeline import records
from training import artifacts, fit
from training.data import make_dataset
from training.model import TINY, load_keras_model
from vidseq.errors import VidseqError

REPO = Path(__file__).resolve().parents[1]


def tf_config(ports: list[int], index: int, kind: str = "worker") -> str:
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.fixture(scope="module")
def one_shard_records(tmp_path_factory):
    """One shard file per split: fewer files than workers, so the workers split the records."""
    directory = str(tmp_path_factory.mktemp("records"))
    write_records(directory, classes=("left", "right", "up"), videos_per_class={"train": 4, "val": 1, "test": 1},
                  sequence_length=4, height=16, width=16, shards=1)  # fmt: skip
    return directory


def start_workers(records_dir: str, out: Path, params: Path, tmp: Path, *, track: bool = False):
    ports = [free_port(), free_port()]
    procs = []
    for index in range(2):
        scratch = tmp / f"tmp{index}"  # each worker's TMPDIR: where a non-chief's temporary outputs go
        scratch.mkdir(exist_ok=True)
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "TMPDIR": str(scratch), "PYTHONPATH": str(REPO),
               "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
        args = [sys.executable, "-m", "training.train", "--records", records_dir, "--output", str(out),
                "--params", str(params), "--verbose", "0", *([] if track else ["--no-track"])]  # fmt: skip
        procs.append(subprocess.Popen(args, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, start_new_session=True))  # fmt: skip
    return procs


def finish(procs, timeout=600):
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            outputs.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return outputs


def write_params(path: Path, **train) -> Path:
    path.write_text(yaml.safe_dump({"model": TINY.as_dict(), "train": {"epochs": 3, "batch_size": 4, **train}}))
    return path


def test_two_workers_train_one_model_written_by_the_chief(one_shard_records, tmp_path):
    out = tmp_path / "model"
    procs = start_workers(one_shard_records, out, write_params(tmp_path / "params.yaml"), tmp_path, track=True)
    (chief_code, chief_out, chief_err), (other_code, other_out, other_err) = finish(procs)
    assert chief_code == 0, chief_err[-3000:]
    assert other_code == 0, other_err[-3000:]
    assert "training on 2 workers together (MultiWorkerMirroredStrategy" in chief_err
    assert "2 workers trained together" in chief_err and f"wrote {out}" in chief_err
    assert "MLflow run" in chief_out and "MLflow run" not in other_out  # only the chief logs
    assert "worker:1 of 2 workers: trained with the chief" in other_out

    written = [artifacts.MODEL_FILE, records.DATASET_JSON, artifacts.HISTORY_JSON, artifacts.HISTORY_CSV,
               artifacts.CURVES_PNG, "mlflow_run.json"]  # fmt: skip
    assert sorted(os.listdir(out)) == sorted(written)
    spec = records.read_spec(str(out))
    assert spec == records.read_spec(one_shard_records)
    model = load_keras_model(str(out / artifacts.MODEL_FILE))
    assert tuple(model.input_shape[1:]) == spec.clip_shape and model.output_shape[-1] == spec.num_classes
    history = json.loads((out / artifacts.HISTORY_JSON).read_text())
    assert history["history"]["epoch"] == [0, 1, 2]
    assert os.listdir(tmp_path / "tmp1") == []  # the non-chief removed its temporary outputs


def _backup_epoch(backup_dir: Path) -> int:
    try:
        return json.loads((backup_dir / "training_metadata.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_workers_resume_from_the_chiefs_backup(one_shard_records, tmp_path):
    out = tmp_path / "model"
    params = write_params(tmp_path / "params.yaml", epochs=30, early_stopping_patience=0)
    procs = start_workers(one_shard_records, out, params, tmp_path)
    backup = out / artifacts.BACKUP_DIR
    deadline = time.monotonic() + 300
    try:
        while _backup_epoch(backup) < 2 and all(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "training ended before it could be killed"
        reached = _backup_epoch(backup)
        assert reached >= 2, "no backup within 300 s"
    finally:
        for proc in procs:  # a real crash of the whole job: no clean-up runs
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (out / artifacts.MODEL_FILE).exists()

    results = finish(start_workers(one_shard_records, out, params, tmp_path))  # all workers started again
    assert [code for code, _, _ in results] == [0, 0], results[0][2][-2000:] + results[1][2][-2000:]
    history = json.loads((out / artifacts.HISTORY_JSON).read_text())
    assert history["initial_epoch"] >= reached  # continued, did not start over
    assert history["history"]["epoch"] == list(range(30))
    assert "resuming from the chief's backup" in results[1][2]
    assert not backup.exists()


def test_tf_config_names_the_workers_and_the_chief():
    assert fit.workers_from_env({}) == fit.Workers()
    one = {"TF_CONFIG": tf_config([1], 0)}
    assert not fit.workers_from_env(one).several
    assert fit.workers_from_env({"TF_CONFIG": tf_config([1, 2, 3], 0)}) == fit.Workers(3, 0, True, "worker:0")
    assert fit.workers_from_env({"TF_CONFIG": tf_config([1, 2, 3], 2)}) == fit.Workers(3, 2, False, "worker:2")
    with_chief = {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]}, "task": {"type": "worker", "index": 0}}
    assert fit.workers_from_env({"TF_CONFIG": json.dumps(with_chief)}) == fit.Workers(3, 1, False, "worker:0")
    with_chief["task"] = {"type": "chief", "index": 0}
    assert fit.workers_from_env({"TF_CONFIG": json.dumps(with_chief)}).chief
    with pytest.raises(VidseqError, match="not a cluster description"):
        fit.workers_from_env({"TF_CONFIG": "{not json"})
    with pytest.raises(VidseqError, match="synchronous workers only"):
        fit.workers_from_env({"TF_CONFIG": json.dumps({"cluster": {"worker": ["h:1"], "ps": ["h:2"]},
                                                      "task": {"type": "worker", "index": 0}})})  # fmt: skip


def _video_ids(ds) -> list[str]:
    return [v.decode() for _, _, ids in ds.as_numpy_iterator() for v in ids]


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_workers_read_disjoint_parts_that_cover_the_split(tmp_path, shards):
    """Fewer shard files than workers: every 3rd record; at least as many: whole files per worker."""
    spec = write_records(str(tmp_path), classes=("left", "right"), videos_per_class={"train": 5},
                         sequence_length=4, height=16, width=16, shards=shards, clips_per_video=1)  # fmt: skip
    everything = sorted(_video_ids(make_dataset(str(tmp_path), "train", spec, 4, with_video_id=True)))
    parts = [_video_ids(make_dataset(str(tmp_path), "train", spec, 4, with_video_id=True, shard=(3, i)))
             for i in range(3)]  # fmt: skip
    assert sorted(v for part in parts for v in part) == everything  # disjoint and complete
    if shards < 3:
        assert [len(p) for p in parts] == [4, 3, 3]  # 10 clips, by record: balanced
    else:
        assert all(parts)
