"""Tests of damaged shards: flipped bytes, truncation and broken gzip are one error naming file and record."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml
from training_fixtures import write_records

from vidseq.params import EvaluateConfig
from training.data import make_dataset
from training.shards import DamagedRecordsError, count_clips, reading_records, scan_shard
from training.model import TINY, build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = "train-00001-of-00002.tfrecord"


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Tiny records (2 shards per split) and the spec; tests damage copies of them."""
    directory = str(tmp_path_factory.mktemp("clean"))
    spec = write_records(directory, classes=("left", "right"), videos_per_class={"train": 2, "val": 1, "test": 1},
                         sequence_length=2, height=8, width=8)  # fmt: skip
    return directory, spec


def copy_records(clean, tmp_path):
    directory, spec = clean
    target = str(tmp_path / "records")
    shutil.copytree(directory, target)
    return target, spec


def record_starts(path, compressed=False):
    """Where each record starts (TFRecord framing: 8-byte length, 4-byte CRC, data, 4-byte CRC)."""
    starts, offset = [], 0
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP" if compressed else "").as_numpy_iterator():
        starts.append(offset)
        offset += len(record) + 16
    return starts


def flip(path, offset, count=8):
    data = bytearray(open(path, "rb").read())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def truncate(path, drop):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) - drop])


@pytest.mark.parametrize(
    "where, expected",
    [
        ("payload", "record #1 at byte {start} is corrupted (CRC mismatch)"),
        ("length", "record #1 at byte {start} is corrupted (CRC mismatch)"),
        ("end", "record #{last} at byte {last_start} is truncated (the file ends inside it)"),
    ],
)
def test_scan_names_the_damaged_record(clean, tmp_path, where, expected):
    directory, _ = copy_records(clean, tmp_path)
    path = os.path.join(directory, SHARD)
    starts = record_starts(path)
    assert len(starts) >= 3
    if where == "payload":
        flip(path, starts[1] + 12 + 40)  # inside record #1's data
    elif where == "length":
        flip(path, starts[1], count=2)  # record #1's length field
    else:
        truncate(path, 5)  # the last record loses its data CRC
    read, damage = scan_shard(path)
    assert damage == expected.format(start=starts[1], last=len(starts) - 1, last_start=starts[-1])
    assert read == (1 if where != "end" else len(starts) - 1)
    assert scan_shard(os.path.join(directory, "train-00000-of-00002.tfrecord"))[1] is None


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_gzip_shard_is_named(tmp_path, damage):
    directory = str(tmp_path / "gz")
    spec = write_records(directory, classes=("left", "right"), videos_per_class={"train": 2}, sequence_length=2,
                         height=8, width=8, compressed=True)  # fmt: skip
    path = os.path.join(directory, SHARD + ".gz")
    if damage == "flip":
        flip(path, os.path.getsize(path) // 2)
    else:
        truncate(path, os.path.getsize(path) // 2)
    ds = make_dataset(directory, "train", spec, batch_size=4)
    with pytest.raises(DamagedRecordsError) as caught, reading_records(directory, spec, "train"):
        list(ds.as_numpy_iterator())
    message = str(caught.value)
    assert message.startswith(f"damaged shard {path}: record #") and "of the decompressed stream" in message
    if damage == "flip":  # zlib notices first; should inflate pass, the record's CRC does not
        assert "the gzip stream is broken (inflate() failed" in message or "is corrupted (CRC mismatch)" in message
    else:
        assert "is truncated (the file ends inside it)" in message
    assert f"python -m pipeline.inspect {directory}" in message and "\n" not in message


def test_a_shard_cut_at_a_record_boundary_is_a_count_mismatch(clean, tmp_path):
    directory, spec = copy_records(clean, tmp_path)
    path = os.path.join(directory, SHARD)
    truncate(path, os.path.getsize(path) - record_starts(path)[-1])  # drop the whole last record
    ds = make_dataset(directory, "train", spec, batch_size=4)
    with pytest.raises(DamagedRecordsError, match=r"split 'train' of .* holds 7 clips but dataset.json counts 8"):
        with reading_records(directory, spec, "train"):
            list(ds.as_numpy_iterator())


def test_counting_an_uncounted_split_names_the_damaged_shard(clean, tmp_path):
    directory, spec = copy_records(clean, tmp_path)
    truncate(os.path.join(directory, SHARD), 5)
    uncounted = spec.__class__.from_dict({**spec.to_dict(), "splits": {"train": {}}})
    with pytest.raises(DamagedRecordsError, match=f"damaged shard .*{SHARD}: record #3 at byte"):
        count_clips(directory, "train", uncounted)


def run_stage(module, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def assert_one_error_line(done, path, record):
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "DataLossError" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert f"damaged shard {path}: record #{record} at byte" in errors[0]
    assert "python -m pipeline.inspect" in errors[0] and "re-run preprocessing" in errors[0]


def test_train_cli_on_a_corrupt_shard_is_one_error_line(clean, tmp_path):
    directory, _ = copy_records(clean, tmp_path)
    path = os.path.join(directory, SHARD)
    flip(path, record_starts(path)[2] + 12 + 40)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": TINY.as_dict(), "train": {"epochs": 1, "batch_size": 4}}))
    done = run_stage("training.train", "--records", directory, "--output", str(tmp_path / "model"),
                     "--params", str(params), "--no-track", "--verbose", "0")  # fmt: skip
    assert_one_error_line(done, path, 2)


def test_evaluate_cli_on_a_truncated_shard_is_one_error_line(clean, tmp_path):
    directory, spec = copy_records(clean, tmp_path)
    path = os.path.join(directory, "test-00000-of-00002.tfrecord")
    truncate(path, 5)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    build_model(spec, TINY).save(str(model_dir / "model.keras"))
    (model_dir / "dataset.json").write_text(spec.to_json())
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": EvaluateConfig(batch_size=4).as_dict()}))
    done = run_stage("training.evaluate", "--records", directory, "--model", str(model_dir),
                     "--output", str(tmp_path / "reports"), "--params", str(params))  # fmt: skip
    assert_one_error_line(done, path, len(record_starts(os.path.join(clean[0], "test-00000-of-00002.tfrecord"))) - 1)


def test_a_data_loss_that_a_rescan_does_not_find_is_still_one_line(clean):
    directory, spec = clean
    with pytest.raises(DamagedRecordsError, match=r"reading the train shards of .* failed \(boom at 12\) but"):
        with reading_records(directory, spec, "train"):
            raise tf.errors.DataLossError(None, None, "{{function_node f}} boom at 12 [Op:IteratorGetNext] name: ")


def test_other_errors_pass_through_undisguised(clean):
    directory, spec = clean
    with pytest.raises(tf.errors.FailedPreconditionError, match="not about records"):
        with reading_records(directory, spec, "train", "val"):
            raise tf.errors.FailedPreconditionError(None, None, "not about records")
