"""Records on object storage: preprocess to s3://, train, evaluate and inspect from it, against moto's S3 on loopback.

Every stage is configured the standard way (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), ``python -m pipeline`` included (no ``--s3_*`` flags).
A missing bucket, refused credentials and an unreachable endpoint are one line naming the URL.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers import BIN, free_port, serve
from training_fixtures import write_records
from videos import write_tiny_video

from pipeline import inspect as insp
from pipeline import records, storage
from training import data as training_data
from training import evaluate as ev
from training import fit
from training import train as tr
from training.model import TINY
from training.shards import DamagedRecordsError, count_clips, shard_files
from vidseq.params import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
PARAMS = {
    "preprocess": {"sequence_length": 4, "height": 16, "width": 16, "fps": 6.0, "clips_per_video": 2,
                   "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_salt": "b"},  # every split: both classes
    "model": TINY.as_dict(),
    "train": {"epochs": 2, "batch_size": 4, "cache": True},
    "evaluate": {"batch_size": 4},
}  # fmt: skip


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """moto's S3 server on a free loopback port; yields the AWS variables that reach it."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log):
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", **CREDENTIALS}


@pytest.fixture
def aws(moto, monkeypatch):
    """This process configured for the moto server, as a user would: the AWS variables only.

    Beam's global options (a job's ``--s3_*`` flags, which win over the variables) are cleared:
    an earlier test may have set them for another server.
    """
    for key, value in moto.items():
        monkeypatch.setenv(key, value)
    filesystems = sys.modules.get("apache_beam.io.filesystems")
    if filesystems is not None:
        monkeypatch.setattr(filesystems.FileSystems, "_pipeline_options", None)
    return moto


def _client(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                        aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip


def _upload(env, local: str, bucket: str, prefix: str) -> str:
    s3 = _client(env)
    if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
        s3.create_bucket(Bucket=bucket)
    for name in sorted(os.listdir(local)):
        s3.upload_file(os.path.join(local, name), bucket, f"{prefix}/{name}")
    return f"s3://{bucket}/{prefix}"


def _stage(module: str, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "TF_CPP_MIN_LOG_LEVEL": "2"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def test_preprocess_to_s3_then_train_evaluate_and_inspect_from_it(moto, tmp_path):
    raw = tmp_path / "raw"
    for g in range(4):
        write_tiny_video(raw / "left" / f"v_left_g{g:02d}_c01.mp4", dx=-1, seed=g)
        write_tiny_video(raw / "right" / f"v_right_g{g:02d}_c01.mp4", dx=1, seed=g)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    _client(moto).create_bucket(Bucket="videos")
    url = "s3://videos/records"

    done = _stage("pipeline", ["--input", str(raw), "--output", url, "--params", str(params)], moto, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]  # the AWS variables alone, no --s3_* flags

    done = _stage("training.train", ["--records", url, "--output", str(tmp_path / "models"), "--params", str(params),
                                     "--verbose", "0"], moto, tmp_path)  # tracked: the run's dataset inputs read S3 too
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best epoch" in done.stdout
    model_spec = records.read_spec(str(tmp_path / "models"))
    assert model_spec.classes == ("left", "right") and model_spec.clip_shape == (4, 16, 16, 3)

    done = _stage("training.evaluate", ["--records", url, "--model", str(tmp_path / "models"),
                                        "--output", str(tmp_path / "reports"), "--params", str(params)], moto, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    assert metrics["clips"] == records.DatasetSpec.from_json(
        _client(moto).get_object(Bucket="videos", Key="records/dataset.json")["Body"].read().decode()
    ).splits["test"]["clips"]

    done = _stage("pipeline.inspect", [url, "--contact-sheet", f"{url}/sheet.png"], moto, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "OK:" in done.stdout and "clips match dataset.json" in done.stdout
    assert _client(moto).head_object(Bucket="videos", Key="records/sheet.png")["ContentLength"] > 0


@pytest.fixture(scope="module")
def s3_records(moto, tmp_path_factory):
    local = str(tmp_path_factory.mktemp("records"))
    write_records(local, classes=("left", "right", "up"), videos_per_class={"train": 4, "val": 1, "test": 1},
                  sequence_length=4, height=16, width=16, shards=2)  # fmt: skip
    return _upload(moto, local, "records", "tiny"), local


def test_the_input_pipeline_reads_the_same_clips_from_s3_as_from_disk(aws, s3_records):
    url, local = s3_records
    spec = records.read_spec(url)
    assert [storage.basename(f) for f in shard_files(url, "train", spec)] == [
        os.path.basename(f) for f in shard_files(local, "train", spec)
    ]
    clips = {}
    for where in (url, local):
        ds = training_data.make_dataset(where, "train", spec, 64, with_video_id=True)
        clips[where] = sorted((v.decode(), float(c.sum())) for b in ds.as_numpy_iterator() for c, v in zip(b[0], b[2]))
    assert clips[url] == clips[local] and len(clips[url]) == spec.splits["train"]["clips"]


def test_gzip_shards_and_uncounted_splits_stream_from_s3(aws, tmp_path):
    local = str(tmp_path / "gz")
    spec = write_records(local, classes=("left", "right"), videos_per_class={"train": 2, "val": 1},
                         sequence_length=4, height=16, width=16, compressed=True, shards=1)  # fmt: skip
    uncounted = records.DatasetSpec(**{**spec.to_dict(), "splits": {}})
    with open(os.path.join(local, records.DATASET_JSON), "w") as handle:
        handle.write(uncounted.to_json())
    url = _upload(aws, local, "gzipped", "records")
    assert count_clips(url, "train", uncounted) == spec.splits["train"]["clips"]  # read, not counted
    shard = shard_files(url, "train", uncounted)[0]
    with gzip.open(os.path.join(local, storage.basename(shard)), "rb") as handle:
        assert handle.read(1)  # really gzip
    assert len(list(storage.read_tfrecords(shard))) == spec.splits["train"]["clips"]


def test_training_from_s3_caches_encoded_records_in_a_file_when_decoded_clips_exceed_the_budget(
    aws, s3_records, tmp_path, monkeypatch
):
    url, _ = s3_records
    spec = records.read_spec(url)
    assert training_data.cache_plan(spec, "train", url, True, str(tmp_path)) == "decoded"  # small: as the demo
    monkeypatch.setattr(training_data, "DECODED_CACHE_BUDGET", 1000)  # too small for any split
    assert training_data.cache_plan(spec, "train", url, True, str(tmp_path)) == "file"
    assert training_data.cache_plan(spec, "train", "local/records", True, str(tmp_path)) == "none"
    out = tmp_path / "model"
    result = fit.train(url, str(out), TINY, TrainConfig(epochs=2, batch_size=4, cache=True))
    assert result.history["epoch"] == [0, 1]
    assert not (out / fit.CACHE_DIR).exists()  # removed with the backup when training succeeded


def test_a_damaged_shard_on_s3_is_one_error_naming_it(aws, s3_records, tmp_path):
    url, local = s3_records
    spec = records.read_spec(url)
    damaged = _upload(aws, local, "damaged", "records")
    name = os.path.basename(shard_files(local, "train", spec)[1])
    data = bytearray(open(os.path.join(local, name), "rb").read())
    data[len(data) // 2] ^= 0xFF
    _client(aws).put_object(Bucket="damaged", Key=f"records/{name}", Body=bytes(data))
    with pytest.raises(DamagedRecordsError, match=rf"damaged shard {damaged}/{name}: record #\d+ at byte \d+ is "):
        fit.train(damaged, str(tmp_path / "model"), TINY, TrainConfig(epochs=1, batch_size=4, cache=False))


@pytest.fixture(scope="module")
def strict_moto(tmp_path_factory):
    """A second moto server that checks credentials (``INITIAL_NO_AUTH_ACTION_COUNT=0``): none it knows."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, log,
               {"INITIAL_NO_AUTH_ACTION_COUNT": "0"}):  # fmt: skip
        yield f"http://127.0.0.1:{port}"


STAGES = {
    "train": lambda url, tmp: tr.main(["--records", url, "--output", str(tmp / "m"), "--no-track", "--verbose", "0"]),
    "evaluate": lambda url, tmp: ev.main(["--records", url, "--model", str(tmp / "m"), "--output", str(tmp / "r")]),
    "inspect": lambda url, tmp: insp.main([url]),
}
CASES = {
    "missing bucket": ("s3://no-such-bucket/records", None,
                       r"bucket 'no-such-bucket' of s3://no-such-bucket/records\S* does not exist at http://127\.0\.0\.1"),
    "refused credentials": ("s3://records/tiny", "strict", r"refused the credentials for s3://records/tiny\S* \("),
    "unreachable endpoint": ("s3://records/tiny", "closed", r"cannot reach the S3 endpoint http://127\.0\.0\.1:\d+ "
                                                            r"for s3://records/tiny"),
}  # fmt: skip


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize("case", sorted(CASES))
def test_store_failures_are_one_line_naming_the_url(stage, case, aws, s3_records, strict_moto, tmp_path, capsys,
                                                    monkeypatch):  # fmt: skip
    url, endpoint, message = CASES[case]
    if endpoint == "strict":
        monkeypatch.setenv("AWS_ENDPOINT_URL", strict_moto)
    elif endpoint == "closed":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    if stage == "evaluate":  # a trained model to evaluate: its folder is local
        spec = records.DatasetSpec(sequence_length=4, height=16, width=16, channels=3, frame_encoding="jpeg",
                                   classes=("left", "right", "up"))  # fmt: skip
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / records.DATASET_JSON).write_text(spec.to_json())
        from training.model import build_model, save_model

        save_model(build_model(spec, TINY), str(tmp_path / "m" / "model.keras"))
    code = STAGES[stage](url, tmp_path)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert code == 2, captured.out[-2000:] + captured.err[-2000:]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
    import re

    assert re.search(message, lines[0]), lines[0]


def test_gcs_records_that_cannot_be_read_are_one_line_naming_the_url(capsys):
    """gs:// goes through TensorFlow's GCS filesystem (or Beam's): unreachable here, or no such bucket."""
    assert storage.backend("gs://vidseq-no-such-bucket/records") in ("tensorflow", "beam")
    assert tr.main(["--records", "gs://vidseq-no-such-bucket/records", "--output", "unused", "--no-track"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "gs://vidseq-no-such-bucket/records/dataset.json" in lines[0], lines


def test_a_rerun_on_s3_reuses_the_clips_of_unchanged_videos(moto, tmp_path):
    """Videos, records and the reuse cache on S3: unchanged videos are neither read nor decoded again."""
    import time

    raw = tmp_path / "raw"
    for g in range(3):
        write_tiny_video(raw / "left" / f"v_left_g{g:02d}_c01.mp4", dx=-1, seed=g)
        write_tiny_video(raw / "right" / f"v_right_g{g:02d}_c01.mp4", dx=1, seed=g)
    s3 = _client(moto)
    s3.create_bucket(Bucket="grow")
    for path in sorted(raw.rglob("*.mp4")):
        s3.upload_file(str(path), "grow", f"raw/{path.relative_to(raw)}")
    time.sleep(2.5)  # settled: a hash is remembered only for an object modified well before it was read
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(PARAMS))
    args = ["--input", "s3://grow/raw", "--output", "s3://grow/records", "--params", str(params)]

    def run() -> dict:
        done = _stage("pipeline", [*args, "--direct_running_mode=in_memory"], moto, tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        body = s3.get_object(Bucket="grow", Key="records/dataset.json")["Body"].read()
        shards = {k["Key"]: s3.get_object(Bucket="grow", Key=k["Key"])["Body"].read()
                  for k in s3.list_objects_v2(Bucket="grow", Prefix="records/")["Contents"] if k["Key"].endswith(".tfrecord")}  # fmt: skip
        return {**json.loads(body)["decode"], "shards": shards}

    first = run()
    assert first["videos_hashed"] == 6 and first["videos_reused"] == 0
    keys = [k["Key"] for k in s3.list_objects_v2(Bucket="grow", Prefix="records.cache/")["Contents"]]
    assert "records.cache/hashes.jsonl" in keys and sum(k.endswith(".clips") for k in keys) == 6
    again = run()
    assert again["videos_hashed"] == 0 and again["videos_reused"] == 6 and again["frames_decoded"] == 0
    assert again["shards"] == first["shards"]
    write_tiny_video(raw / "new.mp4", dx=1, seed=9)
    s3.upload_file(str(raw / "new.mp4"), "grow", "raw/right/v_right_g09_c01.mp4")
    grown = run()
    assert grown["videos_hashed"] == 1 and grown["videos_reused"] == 6 and grown["frames_decoded"] > 0
