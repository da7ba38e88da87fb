"""End-to-end tests of ``python -m pipeline``: real commands on temporary folders, read back two ways."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from videos import write_bad_files, write_tiny_video

from pipeline import build, parallelism, records

REPO = Path(__file__).resolve().parents[1]
PREPROCESS = {
    "split_salt": "vidseq",  # the tiny datasets below are drawn for this salt: train and val each get a group
    "sequence_length": 4,
    "height": 24,
    "width": 32,
    "fps": 6.0,
    "clips_per_video": 2,
    "short_video": "skip",
    "splits": {"train": 0.5, "val": 0.25, "test": 0.25},
    "max_error_fraction": 0.5,
}


def write_params(folder: Path, **overrides) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"preprocess": {**PREPROCESS, **overrides}}))
    return path


def previous_records(folder: Path, note: str = "previous") -> Path:
    """A records output as an earlier run left it (marker included), told apart by its class name."""
    spec = records.DatasetSpec(sequence_length=4, height=24, width=32, channels=3, frame_encoding="jpeg", classes=(note,))
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(spec.to_json())
    (folder / "train-00000-of-00001.tfrecord").write_bytes(b"old")
    return folder


def one_error_line(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [x for x in result.stderr.splitlines() if "apitools not found" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


# Tests about output safety run the job in one process: each default run starts a worker
# process per core (about 2 s here); what a kill -9 does to those workers is tested on its own.
IN_PROCESS = ("--direct_running_mode=in_memory",)


def run_job(*args: str, cwd: Path, in_process: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    flags = IN_PROCESS if in_process else ()
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args, *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """3 classes x 4 videos in mixed containers, plus one of each kind of bad file."""
    root = tmp_path_factory.mktemp("raw")
    exts = ["mp4", "avi", "webm", "mp4"]
    for c, (name, dx, dy) in enumerate([("down", 0, 1), ("left", -1, 0), ("right", 1, 0)]):
        for g in range(4):
            write_tiny_video(root / name / f"v_{name}_g{g:02d}_c01.{exts[g]}", seconds=1.2, fps=10 + 5 * (g % 2), size=(24, 40), dx=dx, dy=dy, seed=c * 10 + g)
    write_tiny_video(root / "left" / "short.mp4", seconds=0.3)
    bad = write_bad_files(root / "right", root / "right" / "v_right_g00_c01.mp4")
    inputs = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())
    return root, bad, inputs


@pytest.fixture(scope="module")
def job(dataset, tmp_path_factory):
    root, bad, inputs = dataset
    work = tmp_path_factory.mktemp("job")
    params = write_params(work)
    result = run_job("--input", str(root), "--output", str(work / "records"), "--params", str(params), cwd=work)
    return work / "records", result


def test_job_writes_contract_and_summary(job, dataset):
    out, result = job
    assert result.returncode == 0, result.stderr
    spec = records.read_spec(str(out))
    assert spec.clip_shape == (4, 24, 32, 3)
    assert spec.classes == ("down", "left", "right")
    assert spec.sampling["fps"] == 6.0 and spec.format_version == records.FORMAT_VERSION
    total_clips = sum(s["clips"] for s in spec.splits.values())
    assert sum(s["videos"] for s in spec.splits.values()) == 12
    assert total_clips == 24
    shards = sum(len(glob.glob(str(out / records.shard_pattern(s)))) for s in records.SPLITS)
    workers = parallelism.plan([], parallelism.this_machine()).describe()
    decode = spec.decode
    assert decode["mode"] == "auto" and decode["videos_seek"] + decode["videos_sequential"] == 12
    assert decode["frames_kept"] <= 24 * 4 and decode["frames_decoded"] >= decode["frames_kept"] > 0
    assert (
        f"{len(dataset[2])} videos → 24 clips in {shards} shards on {workers}; "
        f"decoded {decode['frames_decoded']} frames for {decode['frames_kept']} kept; {spec.errors} failed, see"
    ) in result.stdout
    assert not glob.glob(str(out) + ".staging-*"), "staging folder left behind"
    worker_chatter = ("Worker: severity", "sdk_worker", "Logging handler created", "semi_persistent_directory",
                      "Pipeline_options", "data channel", "control channel")  # fmt: skip
    chatter = [x for x in result.stderr.splitlines() if any(marker in x for marker in worker_chatter)]
    assert chatter == [], "the worker processes' logs reach the output"
    assert not [x for x in result.stderr.splitlines() if x.startswith(("ERROR", "Traceback"))]


def test_every_input_is_in_a_record_or_in_errors(job, dataset):
    out, _ = job
    root, bad, inputs = dataset
    errors = [json.loads(line) for line in (out / records.ERRORS_JSONL).read_text().splitlines()]
    assert all(set(e) == {"path", "reason", "stage"} for e in errors)
    seen = {r["video_id"][0].decode() for f in glob.glob(str(out / "*.tfrecord")) for r in _lite(f)}
    failed = {e["path"] for e in errors}
    assert not seen & failed
    assert seen | failed == set(inputs)
    assert {f"right/{name}" for name in bad} <= failed
    assert "left/short.mp4" in failed
    assert records.read_spec(str(out)).errors == len(errors)


def _lite(path):
    import tfrecord_lite

    return list(tfrecord_lite.tf_record_iterator(path))


def test_records_read_back_with_tf_data(job):
    import tensorflow as tf

    out, _ = job
    spec = records.read_spec(str(out))
    files = sorted(glob.glob(str(out / records.shard_pattern("train"))))
    ds = tf.data.TFRecordDataset(files).map(lambda x: tf.io.parse_single_example(x, records.tf_feature_spec(4)))
    count = 0
    for ex in ds:
        frames = tf.map_fn(tf.io.decode_jpeg, ex["frames"], fn_output_signature=tf.uint8)
        assert tuple(frames.shape) == spec.clip_shape
        assert spec.classes[int(ex["label"][0])] == ex["label_name"][0].numpy().decode()
        assert ex["video_id"][0].numpy().decode().startswith(ex["label_name"][0].numpy().decode() + "/")
        ts = ex["timestamps"].numpy()
        assert (ts[1:] > ts[:-1]).all()
        count += 1
    assert count == spec.splits["train"]["clips"] > 0


def test_groups_never_straddle_splits(job):
    out, _ = job
    split_of_group = {}
    for split in records.SPLITS:
        for f in glob.glob(str(out / records.shard_pattern(split))):
            for r in _lite(f):
                vid = r["video_id"][0].decode()
                group = vid.split("_g")[1][:2] + vid.split("/")[0]
                assert split_of_group.setdefault(group, split) == split


def test_same_inputs_same_output(job, dataset, tmp_path):
    out, _ = job
    root = dataset[0]
    params = write_params(tmp_path)
    second = run_job("--input", str(root), "--output", str(tmp_path / "again"), "--params", str(params), cwd=tmp_path, in_process=True)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "again" / "dataset.json").read_text() == (out / "dataset.json").read_text()
    for split in records.SPLITS:
        a = sorted(r for f in glob.glob(str(out / records.shard_pattern(split))) for r in map(_key, _lite(f)))
        b = sorted(r for f in glob.glob(str(tmp_path / "again" / records.shard_pattern(split))) for r in map(_key, _lite(f)))
        assert a == b


def _key(r):
    return r["video_id"][0].decode(), tuple(r["frame_indices"].tolist()), b"".join(r["frames"])


def test_too_many_failures_exit_non_zero_and_keep_previous_output(job, dataset, tmp_path):
    out, _ = job
    root = dataset[0]
    previous = previous_records(tmp_path / "records")
    before = (previous / "dataset.json").read_text()
    params = write_params(tmp_path, max_error_fraction=0.05)
    result = run_job("--input", str(root), "--output", str(previous), "--params", str(params), cwd=tmp_path, in_process=True)
    assert result.returncode == 1
    assert "preprocess.max_error_fraction" in result.stderr and "previous output is left intact" in result.stderr
    assert (previous / "dataset.json").read_text() == before
    (kept,) = glob.glob(str(previous) + ".staging-*")
    assert f"see {kept}/errors.jsonl (kept until the next run into {previous})" in result.stderr
    assert os.path.getsize(os.path.join(kept, "errors.jsonl")) > 0
    again = run_job("--input", str(root), "--output", str(previous), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert again.returncode == 0, again.stderr
    assert not os.path.exists(kept)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--input", "{root}/../nowhere"], "does not exist"),
        (["--input", "{root}", "--params", "{work}/bad.yaml"], "unknown key preprocess.sequence_lenght"),
        (["--input", "{root}", "--params", "{work}/neg.yaml"], "preprocess.sequence_length must be a positive integer"),
        (["--input", "{root}", "--params", "{work}/type.yaml"], "preprocess.fps must be a number"),
    ],
)
def test_bad_arguments_stop_before_any_work(dataset, tmp_path, args, message):
    root = dataset[0]
    (tmp_path / "bad.yaml").write_text("preprocess: {sequence_lenght: 8}\n")
    (tmp_path / "neg.yaml").write_text("preprocess: {sequence_length: -8}\n")
    (tmp_path / "type.yaml").write_text("preprocess: {fps: fast}\n")
    argv = [a.format(root=root, work=tmp_path) for a in args] + ["--output", str(tmp_path / "out")]
    if "--params" not in argv:
        argv += ["--params", str(write_params(tmp_path))]
    result = run_job(*argv, cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and message in line
    assert not (tmp_path / "out").exists() and not glob.glob(str(tmp_path / "out.staging-*"))


def test_unreadable_file_is_recorded(dataset, tmp_path, monkeypatch):
    """In-process run where one file cannot be opened (as root, chmod cannot make a file unreadable)."""
    root = dataset[0]
    from apache_beam.io.filesystems import FileSystems

    real_open = FileSystems.open
    target = str(root / "down" / "v_down_g00_c01.mp4")

    def guarded_open(path, *args, **kwargs):
        if path == target:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "open", staticmethod(guarded_open))
    args = ["--input", str(root), "--output", str(tmp_path / "out"), "--params", str(write_params(tmp_path))]
    code = build.main([*args, "--direct_running_mode=in_memory"])  # the patch lives in this process
    assert code == 0
    errors = {e["path"]: e for e in map(json.loads, (tmp_path / "out" / "errors.jsonl").read_text().splitlines())}
    assert errors["down/v_down_g00_c01.mp4"]["stage"] == "open"
    assert "Permission denied" in errors["down/v_down_g00_c01.mp4"]["reason"]


def test_runner_flags_override_the_default_parallelism(dataset, job, tmp_path):
    out, _ = job
    root = dataset[0]
    params = write_params(tmp_path)
    for name, flags, workers in [
        ("in_memory", ["--direct_running_mode=in_memory"], "on 1 process;"),
        ("three", ["--direct_num_workers=3"], "on 3 worker processes;"),
    ]:
        result = run_job("--input", str(root), "--output", str(tmp_path / name), "--params", str(params), *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert workers in result.stdout
        assert (tmp_path / name / "dataset.json").read_text() == (out / "dataset.json").read_text()


@pytest.mark.parametrize("decode", ["sequential", "seek"])
def test_decode_modes_write_the_same_records(dataset, job, tmp_path, decode):
    out, _ = job
    result = run_job("--input", str(dataset[0]), "--output", str(tmp_path / "out"),
                     "--params", str(write_params(tmp_path, decode=decode)), cwd=tmp_path, in_process=True)
    assert result.returncode == 0, result.stderr
    for split in records.SPLITS:
        a = sorted(r for f in glob.glob(str(out / records.shard_pattern(split))) for r in map(_key, _lite(f)))
        b = sorted(r for f in glob.glob(str(tmp_path / "out" / records.shard_pattern(split))) for r in map(_key, _lite(f)))
        assert a == b
    spec = records.read_spec(str(tmp_path / "out"))
    assert spec.decode[f"videos_{decode}"] == 12 and spec.decode["frames_kept"] == records.read_spec(str(out)).decode["frames_kept"]


def test_a_video_whose_open_never_returns_is_recorded_and_the_job_ends(tmp_path):
    """A FIFO nobody writes: open() blocks in the kernel, where no deadline check reaches."""
    root = tmp_path / "raw"
    for name, dx in (("left", -1), ("right", 1)):
        write_tiny_video(root / name / f"v_{name}_g00_c01.mp4", seconds=1.0, size=(16, 16), dx=dx)
    os.mkfifo(root / "left" / "v_left_g01_c01.mp4")
    params = write_params(tmp_path, video_timeout_s=1.0, max_error_fraction=0.5)
    result = run_job("--input", str(root), "--output", str(tmp_path / "out"), "--params", str(params), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (error,) = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert error["path"] == "left/v_left_g01_c01.mp4" and error["stage"] == "timeout"
    assert "abandoned" in error["reason"]
    assert "3 videos → 4 clips" in result.stdout


def test_rerun_replaces_previous_output(dataset, tmp_path):
    root = dataset[0]
    out = previous_records(tmp_path / "records")
    (out / "val-00000-of-00001.tfrecord.gz").write_bytes(b"old")
    result = run_job("--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert result.returncode == 0, result.stderr
    assert not (out / "val-00000-of-00001.tfrecord.gz").exists()
    assert records.read_spec(str(out)).classes == ("down", "left", "right")
    # no lock, old or staging left; the reuse cache lies beside the output (pipeline.reuse)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "records", "records.cache"]


def test_manifest_input_with_missing_row(dataset, tmp_path):
    root = dataset[0]
    manifest = root / "manifest.csv"
    rows = ["path,label,group", "left/v_left_g00_c01.mp4,west,s1", "right/v_right_g00_c01.mp4,east,s1",
            "right/v_right_g01_c01.avi,east,s2", "right/gone.mp4,east,s3"]
    manifest.write_text("\n".join(rows) + "\n")
    try:
        result = run_job("--input", str(manifest), "--output", str(tmp_path / "out"),
                         "--params", str(write_params(tmp_path, max_error_fraction=0.3, split_salt="a")),  # train and val get a group
                         cwd=tmp_path, in_process=True)  # fmt: skip
    finally:
        manifest.unlink()
    assert result.returncode == 0, result.stderr
    spec = records.read_spec(str(tmp_path / "out"))
    assert spec.classes == ("east", "west")
    (error,) = [json.loads(x) for x in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert error["path"] == "right/gone.mp4" and error["stage"] == "list"
    assert "4 videos → 6 clips" in result.stdout


def test_interrupted_run_keeps_previous_output_and_cleans_staging(dataset, tmp_path, monkeypatch):
    root = dataset[0]
    out = previous_records(tmp_path / "records")
    before = (out / "dataset.json").read_text()

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(build.transforms, "read_stats", interrupt)
    args = ["--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path))]
    assert build.main(args) == 130  # Ctrl-C: "interrupted", no traceback
    assert (out / "dataset.json").read_text() == before
    assert not glob.glob(str(out) + ".staging-*") and not os.path.exists(str(out) + ".lock")


@pytest.mark.parametrize(
    "output, message",
    [
        ("{root}", "is the input"),
        ("{root}/..", "contains the input"),
        ("{root}/left", "lies inside the input"),
        ("{work}/file", "is a file, not a folder"),
        ("{work}/other", "already holds 1 entry (notes.txt)"),
        ("{work}/file/out", "is a file, not a folder"),
    ],
)
def test_output_the_job_did_not_write_is_refused_before_any_work(dataset, tmp_path, output, message):
    root = dataset[0]
    work = tmp_path / "work"
    (work / "other").mkdir(parents=True)
    (work / "other" / "notes.txt").write_text("notes")
    (work / "file").write_text("precious")
    params = write_params(tmp_path)

    def snapshot():
        return sorted((p, p.stat().st_mtime_ns) for p in [*root.rglob("*"), *tmp_path.rglob("*")])

    before = snapshot()
    argv = ["--input", str(root), "--output", output.format(root=root, work=work), "--params", str(params)]
    result = run_job(*argv, cwd=tmp_path)
    one_error_line(result, message)  # no log line either: stopped before listing or decoding
    assert snapshot() == before


def test_manifest_listing_a_video_inside_the_output_is_refused(dataset, tmp_path):
    root = dataset[0]
    out = previous_records(tmp_path / "out")  # replaceable, but the manifest reads a file inside it
    (tmp_path / "list.csv").write_text(
        f"path,label\n{root}/right/v_right_g00_c01.mp4,r\nout/train-00000-of-00001.tfrecord,l\n"
    )
    result = run_job("--input", str(tmp_path / "list.csv"), "--output", str(out), "--params", str(write_params(tmp_path)), cwd=tmp_path)
    one_error_line(result, "contains the input video")
    assert (out / "train-00000-of-00001.tfrecord").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["list.csv", "out", "params.yaml"]


def _start_job(root: Path, out: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--input", str(root), "--output", str(out), "--params", str(write_params(work))]
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args, *IN_PROCESS], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_staging(job: subprocess.Popen, out: Path, known: set) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        new = set(glob.glob(str(out) + ".staging-*")) - known
        if new:
            assert job.poll() is None, "the job ended; it should be blocked reading the FIFO"
            return new.pop()
        assert job.poll() is None, f"the job exited with {job.returncode} before it made its staging folder"
        time.sleep(0.05)
    raise AssertionError("no staging folder appeared")


def input_blocked_on_a_fifo(root: Path) -> Path:
    """Two classes of two tiny videos and ``left/v_left_g09_c01.mp4``, a FIFO: a run that opens it waits."""
    for name, dx in (("left", -1), ("right", 1)):
        for g in range(2):
            write_tiny_video(root / name / f"v_{name}_g{g:02d}_c01.mp4", seconds=1.0, size=(16, 16), dx=dx, seed=g)
    os.mkfifo(root / "left" / "v_left_g09_c01.mp4")
    return root


def test_kill_9_and_concurrent_runs(tmp_path):
    """Runs blocked on a FIFO (a 'video' whose open() never returns) are mid-run for as long as the test wants."""
    root = input_blocked_on_a_fifo(tmp_path / "raw")
    out = previous_records(tmp_path / "out")
    before = (out / "dataset.json").read_text()
    dead = set()
    for _ in range(2):
        first = _start_job(root, out, tmp_path)
        try:
            mine = _wait_for_staging(first, out, dead)
            assert not any(os.path.exists(s) for s in dead), "a killed run's staging folder outlived the next run"
            second = run_job("--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
            one_error_line(second, f"--output {out} is being written by another run")
            assert first.poll() is None and os.path.isdir(mine), "the refused run touched the running one"
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        dead.add(mine)
        assert (out / "dataset.json").read_text() == before
    assert glob.glob(str(out) + ".staging-*") == [mine]
    os.unlink(root / "left" / "v_left_g09_c01.mp4")
    result = run_job("--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and not [x for x in result.stderr.splitlines() if x.startswith("error")]
    assert records.read_spec(str(out)).classes == ("left", "right")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.cache", "params.yaml", "raw"]


def _processes() -> dict[int, tuple[int, str, str]]:
    """``{pid: (parent pid, state, command line)}`` of every process, from /proc."""
    found = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
            command = Path(stat).with_name("cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = text.rsplit(")", 1)[1].split()
        found[int(text.split(" ", 1)[0])] = (int(fields[1]), fields[0], command)
    return found


def _workers_of(pid: int) -> set[int]:
    """The Beam SDK worker processes below ``pid`` (its children and theirs)."""
    table, below, todo = _processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, _, _) in table.items():
            if ppid == parent and child not in below:
                below.add(child)
                todo.append(child)
    return {p for p in below if "sdk_worker_main" in table[p][2]}


def _is_shell(pid: int, table: dict[int, tuple[int, str, str]]) -> bool:
    """Whether ``pid`` is the ``/bin/sh -c`` that Beam starts each worker through (it waits for its worker)."""
    return os.path.basename(table[pid][2].split(" ", 1)[0]) in ("sh", "dash", "bash")


def _blocked_on_a_fifo(pid: int) -> bool:
    """Whether a thread of ``pid`` waits in ``open()`` of a FIFO for its writer (the kernel's wait channel)."""
    for wchan in glob.glob(f"/proc/{pid}/task/*/wchan"):
        try:
            if Path(wchan).read_text().strip() in ("wait_for_partner", "fifo_open"):
                return True
        except OSError:
            continue
    return False


def _connected(pid: int) -> bool:
    """Whether ``pid`` holds a socket: a Beam worker opens its gRPC channels once its imports are done."""
    for fd in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            if os.readlink(fd).startswith("socket:"):
                return True
        except OSError:
            continue
    return False


def test_kill_9_of_a_multi_process_job_leaves_no_worker_running(tmp_path):
    """A worker blocked in open() on a FIFO stands for a stuck decoder: the killed job's workers still exit.

    The job is killed only once both workers are connected and one of them is decoding (blocked on
    the FIFO): a worker still importing Beam when its job dies waits for the gone job's address for
    Beam's 60 s connection timeout before it exits (Beam 2.78 imports pandas on start, so start-up
    takes seconds on a loaded machine).
    """
    root = input_blocked_on_a_fifo(tmp_path / "raw")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path)),
            "--direct_running_mode=multi_processing", "--direct_num_workers=2"]  # fmt: skip
    job = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        workers: set[int] = set()  # the workers and the shells Beam starts them through
        pythons: set[int] = set()
        while len(pythons) < 2 or not all(map(_connected, pythons)) or not any(map(_blocked_on_a_fifo, pythons)):
            assert job.poll() is None, f"the job exited with {job.returncode}; the FIFO should hold it"
            assert time.monotonic() < deadline, f"no two connected workers, one on the FIFO, in 240 s ({pythons})"
            time.sleep(0.1)
            table = _processes()
            workers |= _workers_of(job.pid)
            pythons = {p for p in workers if p in table and not _is_shell(p, table)}
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    deadline = time.monotonic() + 30
    while True:
        table = _processes()
        running = {p for p in workers if p in table and table[p][1] != "Z"}
        if not running or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not running, f"workers {sorted(running)} still run 30 s after the job was killed"
    os.unlink(root / "left" / "v_left_g09_c01.mp4")
    result = run_job("--input", str(root), "--output", str(out), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert result.returncode == 0, result.stderr  # the lock died with the job; the dead staging folder is cleaned
    assert glob.glob(str(out) + ".staging-*") == []


def test_next_run_repairs_a_publish_killed_between_its_renames(dataset, tmp_path):
    """The state a kill -9 between 'output -> output.old-*' and 'staging -> output' leaves."""
    root = dataset[0]
    old = previous_records(tmp_path / "out.old-0123abcd")
    before = (old / "dataset.json").read_text()
    (tmp_path / "out.staging-89abcdef").mkdir()
    (tmp_path / "out.staging-89abcdef" / "train-00000-of-00001.tfrecord").write_bytes(b"half")
    bad = run_job("--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "out"),
                  "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith("error: input path")
    assert f"restored {tmp_path / 'out'} from {old}: a run died while publishing" in bad.stderr
    assert (tmp_path / "out" / "dataset.json").read_text() == before  # repaired before anything else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "params.yaml"]
    result = run_job("--input", str(root), "--output", str(tmp_path / "out"), "--params", str(write_params(tmp_path)), cwd=tmp_path, in_process=True)
    assert result.returncode == 0, result.stderr
    assert records.read_spec(str(tmp_path / "out")).classes == ("down", "left", "right")
