"""The Beam job on other runners and filesystems, by flags alone: PortableRunner and s3:// (moto)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from servers import BIN, free_port, serve
from videos import write_bad_files, write_tiny_video

from pipeline import records

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"preprocess": {"sequence_length": 4, "height": 16, "width": 16, "fps": 6.0, "clips_per_video": 2,
                         "splits": {"train": 0.5, "val": 0.5, "test": 0.0}, "max_error_fraction": 0.5}}


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    for g in range(3):
        write_tiny_video(root / "left" / f"v_left_g{g:02d}_c01.mp4", dx=-1, seed=g)
        write_tiny_video(root / "right" / f"v_right_g{g:02d}_c01.avi", dx=1, seed=g)
    write_bad_files(root / "right", root / "left" / "v_left_g00_c01.mp4")
    (root.parent / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def _run(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _check_local_output(out: Path) -> None:
    spec = records.read_spec(str(out))
    assert spec.splits["train"]["videos"] + spec.splits["val"]["videos"] == 6
    assert spec.errors == 5
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 5


def test_portable_runner_with_external_workers(raw, tmp_path):
    """Beam's own job service + SDK workers in separate processes: the portability API Flink/Spark/Dataflow speak."""
    job_port, worker_port = free_port(), free_port()
    env = {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
    with serve([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", "--port", str(job_port)],
               job_port, tmp_path / "job_service.log", env), \
         serve([sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", "--service_port", str(worker_port)],
               worker_port, tmp_path / "worker_pool.log", env):
        result = _run(
            ["--input", str(raw), "--output", str(tmp_path / "out"), "--params", str(raw.parent / "params.yaml"),
             "--runner", "PortableRunner", f"--job_endpoint=localhost:{job_port}",
             "--environment_type", "EXTERNAL", f"--environment_config=localhost:{worker_port}"],
            cwd=tmp_path,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "11 videos → 12 clips in" in result.stdout
    _check_local_output(tmp_path / "out")


def test_input_and_output_on_s3(raw, tmp_path):
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = dict(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, tmp_path / "moto.log"):
        s3 = boto3.client("s3", endpoint_url=endpoint, **creds)
        s3.create_bucket(Bucket="videos")
        for path in sorted(raw.rglob("*")):
            if path.is_file():
                s3.upload_file(str(path), "videos", f"raw/{path.relative_to(raw)}")
        old_spec = records.DatasetSpec(sequence_length=4, height=16, width=16, channels=3, frame_encoding="jpeg", classes=("old",))
        s3.put_object(Bucket="videos", Key="records/dataset.json", Body=old_spec.to_json().encode())  # a records output
        s3.put_object(Bucket="videos", Key="records/train-00007-of-00008.tfrecord", Body=b"old")
        result = _run(
            ["--input", "s3://videos/raw", "--output", "s3://videos/records", "--params", str(raw.parent / "params.yaml"),
             f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing", "--s3_secret_access_key=testing",
             "--s3_region_name=us-east-1"],
            cwd=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "11 videos → 12 clips in" in result.stdout and "s3://videos/records/errors.jsonl" in result.stdout
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        from training.tracking import lineage

        FileSystems.set_options(PipelineOptions([f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                                                 "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]))
        assert records.read_spec("s3://videos/records").errors == 5  # readers work on the object store too
        assert lineage.errors_summary("s3://videos/records")["count"] == 5
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="videos", Prefix="records/")["Contents"])
        assert "records/train-00007-of-00008.tfrecord" not in keys
        assert not [k for k in s3.list_objects_v2(Bucket="videos")["Contents"] if ".staging-" in k["Key"]]
        local = tmp_path / "download"
        local.mkdir()
        for key in keys:
            s3.download_file("videos", key, str(local / key.split("/", 1)[1]))
    _check_local_output(local)
    from pipeline import inspect as inspect_records

    assert inspect_records.main([str(local)]) == 0
