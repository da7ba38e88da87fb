"""Tests of ``pipeline.staging``: which outputs may be replaced, the lock, repair of a dead publish, S3."""

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from servers import BIN, free_port, serve
from videos import write_tiny_video

from pipeline import records, staging
from pipeline.staging import OutputError

REPO = Path(__file__).resolve().parents[1]
SPEC = records.DatasetSpec(sequence_length=4, height=16, width=16, channels=3, frame_encoding="jpeg", classes=("a", "b"))


def make_records(folder: Path, text: str = SPEC.to_json()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / records.DATASET_JSON).write_text(text)
    (folder / records.ERRORS_JSONL).write_text("")
    (folder / records.shard_name("train", 0, 1)).write_bytes(b"old shard")
    return folder


def claim_once(output, input_path) -> str:
    with staging.claim(str(output), str(input_path)) as stage_dir:
        assert os.path.isdir(stage_dir)
        staging.discard(stage_dir)
        return stage_dir


@pytest.fixture
def raw(tmp_path):
    root = tmp_path / "data" / "raw"
    for name in ("left/a.mp4", "right/b.mp4"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"video")
    return root


@pytest.mark.parametrize(
    "output, relation",
    [
        ("data/raw", "is the input"),
        ("data/raw/", "is the input"),
        ("data/raw/left/../", "is the input"),
        ("data", "contains the input"),
        (".", "contains the input"),
        ("data/raw/left", "lies inside the input"),
        ("data/raw/new", "lies inside the input"),
        ("link", "is the input"),
        ("link/left", "lies inside the input"),
    ],
)
def test_output_overlapping_the_input_is_refused(raw, tmp_path, monkeypatch, output, relation):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(raw)
    before = sorted(raw.rglob("*"))
    with pytest.raises(OutputError, match=f"{relation} .*choose an output folder outside the input"):
        claim_once(output, "data/raw")
    assert sorted(raw.rglob("*")) == before
    assert not glob.glob(str(tmp_path / "**" / "*.staging-*"), recursive=True)
    assert not glob.glob(str(tmp_path / "**" / "*.lock"), recursive=True)


def test_manifest_folder_and_listed_videos_count_as_input(raw, tmp_path):
    manifest = raw / "manifest.csv"
    manifest.write_text("path,label\nleft/a.mp4,l\n")
    with pytest.raises(OutputError, match="contains the input .*manifest.csv"):
        claim_once(raw, manifest)  # the manifest's folder
    with pytest.raises(OutputError, match="contains the input .*manifest.csv"):
        claim_once(tmp_path / "data", manifest)
    with pytest.raises(OutputError, match="is the input"):
        claim_once(manifest, manifest)
    claim_once(raw / "records", manifest)  # inside the manifest's folder but holding no video: allowed
    with pytest.raises(OutputError, match="contains the input video"):
        staging.check_apart(str(raw / "left"), [str(raw / "left" / "a.mp4")], what="the input video")


def test_only_records_empty_or_missing_outputs_are_replaced(raw, tmp_path):
    claim_once(tmp_path / "missing", raw)
    (tmp_path / "empty").mkdir()
    claim_once(tmp_path / "empty", raw)
    claim_once(make_records(tmp_path / "records"), raw)
    legacy = SPEC.to_dict()
    del legacy["format"]
    claim_once(make_records(tmp_path / "legacy", text=json.dumps(legacy)), raw)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("file", "is a file, not a folder"),
        ("notes", r"already holds 2 entries \(notes.txt, videos\)"),
        ("hidden", r"already holds 1 entry \(.DS_Store\)"),
        ("bad_json", "is not a records output"),
        ("not_a_spec", "is not a records output"),
        ("extra_file", "is not a records output"),
        ("model_folder", "is not a records output"),
    ],
)
def test_anything_else_is_refused_and_left_alone(raw, tmp_path, kind, message):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("precious")
    elif kind == "notes":
        out.mkdir()
        (out / "notes.txt").write_text("precious")
        (out / "videos").mkdir()
    elif kind == "hidden":
        out.mkdir()
        (out / ".DS_Store").write_text("")
    elif kind == "bad_json":
        make_records(out, text="{not json")
    elif kind == "not_a_spec":
        make_records(out, text='{"old": true}')
    elif kind == "extra_file":
        make_records(out)
        (out / "notes.txt").write_text("precious")
    elif kind == "model_folder":  # training copies dataset.json, marker included, beside the model
        out.mkdir()
        (out / records.DATASET_JSON).write_text(SPEC.to_json())
        (out / "model.keras").write_bytes(b"weights")
    before = {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    with pytest.raises(OutputError, match=message):
        claim_once(out, raw)
    assert {p: p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()} == before
    assert not glob.glob(str(out) + ".*")


def test_a_second_claim_is_refused_while_the_first_holds_the_lock(raw, tmp_path):
    out = tmp_path / "out"
    with staging.claim(str(out), str(raw)) as first:
        with pytest.raises(OutputError, match=r"is being written by another run \(it holds .*out.lock\)"):
            claim_once(out, raw)
        assert os.path.isdir(first), "the refused claim must not touch the running one's staging folder"
    assert not (tmp_path / "out.lock").exists()
    claim_once(out, raw)  # released


def test_lock_of_a_killed_process_is_free(raw, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys; from pipeline import staging\n"
        "with staging.claim(sys.argv[1], sys.argv[2]) as s:\n"
        "    print(s, flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out), str(raw)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        held_staging = holder.stdout.readline().strip()
        assert os.path.isdir(held_staging)
        with pytest.raises(OutputError, match="is being written by another run"):
            claim_once(out, raw)
        assert os.path.isdir(held_staging)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "out.lock").exists()  # kill -9 left the file, but not the lock
    claim_once(out, raw)
    assert not os.path.exists(held_staging), "the dead run's staging folder is removed"
    assert not (tmp_path / "out.lock").exists()


def test_a_publish_that_died_between_renames_is_repaired(raw, tmp_path, monkeypatch):
    out = make_records(tmp_path / "out")
    previous = (out / records.DATASET_JSON).read_text()
    new = tmp_path / "new"
    make_records(new, text=SPEC.to_json().replace('"a"', '"c"'))
    monkeypatch.setattr(staging, "_exchange", lambda a, b: False)  # a kernel or filesystem without it
    real_rename = os.rename
    calls = []

    def rename_then_die(src, dst):
        calls.append(src)
        if len(calls) == 2:
            raise SystemExit("killed between the two renames")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(SystemExit):
        staging.publish(str(new), str(out))
    monkeypatch.setattr(os, "rename", real_rename)
    assert not out.exists() and len(glob.glob(str(out) + ".old-*")) == 1
    (tmp_path / "out.staging-0123abcd").mkdir()
    (tmp_path / "out.old-backup").mkdir()  # not a name the job makes: never touched
    claim_once(out, raw)
    assert (out / records.DATASET_JSON).read_text() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "new", "out", "out.old-backup"]


def test_publish_exchanges_atomically(tmp_path, monkeypatch):
    out = make_records(tmp_path / "out")
    new = make_records(tmp_path / "new", text=SPEC.to_json().replace('"a"', '"c"'))

    def no_rename(*_):
        raise AssertionError("publish renamed instead of exchanging: the output path would go missing")

    monkeypatch.setattr(os, "rename", no_rename)
    staging.publish(str(new), str(out))
    assert '"c"' in (out / records.DATASET_JSON).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_unwritable_output_fails_at_claim(raw, tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputError, match="cannot write --output .*file is a file, not a folder"):
        claim_once(tmp_path / "file" / "out", raw)
    with pytest.raises(OutputError, match="cannot write --output .*Not a directory"):
        claim_once(tmp_path / "file" / "sub" / "out", raw)


def test_read_only_parent_stops_the_job_before_decoding(tmp_path):
    """Root ignores file modes, so the job runs as ``nobody`` (via setpriv) when the tests run as root."""
    base = Path(tempfile.mkdtemp(prefix="vidseq-ro-"))  # in /tmp itself: traversable by nobody
    try:
        base.chmod(0o755)
        write_tiny_video(base / "raw" / "left" / "v.mp4", size=(16, 16))
        (base / "params.yaml").write_text("preprocess: {sequence_length: 4, height: 16, width: 16}\n")
        (base / "ro").mkdir()
        (base / "ro").chmod(0o555)
        prefix = []
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            assert setpriv, "setpriv (util-linux) is needed to test permissions as root"
            prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
        result = subprocess.run(
            [*prefix, sys.executable, "-m", "pipeline", "--input", str(base / "raw"), "--output", str(base / "ro" / "out"),
             "--params", str(base / "params.yaml")],
            capture_output=True, text=True, cwd=base, env={**os.environ, "PYTHONPATH": str(REPO), "HOME": str(base)},
        )
        lines = [x for x in result.stderr.splitlines() if "apitools not found" not in x]
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: cannot write --output {base}/ro/out: Permission denied")
        assert os.listdir(base / "ro") == []
    finally:
        (base / "ro").chmod(0o755)
        shutil.rmtree(base)


def test_object_store_outputs_are_checked_too(tmp_path):
    boto3 = pytest.importorskip("boto3")
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with serve([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, tmp_path / "moto.log"):
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
        s3.create_bucket(Bucket="bkt")
        s3.put_object(Bucket="bkt", Key="raw/left/a.mp4", Body=b"video")
        s3.put_object(Bucket="bkt", Key="notes/todo.txt", Body=b"precious")
        s3.put_object(Bucket="bkt", Key="afile", Body=b"precious")
        s3.put_object(Bucket="bkt", Key="records/dataset.json", Body=SPEC.to_json().encode())
        s3.put_object(Bucket="bkt", Key="records/train-00000-of-00001.tfrecord", Body=b"old")
        FileSystems.set_options(PipelineOptions([f"--s3_endpoint_url={endpoint}", "--s3_access_key_id=testing",
                                                 "--s3_secret_access_key=testing", "--s3_region_name=us-east-1"]))
        for output, message in [
            ("s3://bkt/raw", "is the input"),
            ("s3://bkt/", "contains the input"),
            ("s3://bkt/raw/left", "lies inside the input"),
            ("s3://bkt/notes", r"already holds 1 entry \(todo.txt\)"),
            ("s3://bkt/afile", "is an object"),
        ]:
            with pytest.raises(OutputError, match=message):
                with staging.claim(output, "s3://bkt/raw"):
                    pass
        with staging.claim("s3://bkt/records", "s3://bkt/raw") as stage_dir:
            assert stage_dir.startswith("s3://bkt/records.staging-")
        with staging.claim("s3://bkt/new", "s3://bkt/raw"):
            pass
        assert len(s3.list_objects_v2(Bucket="bkt")["Contents"]) == 5  # nothing deleted
