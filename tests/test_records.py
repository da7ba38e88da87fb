"""Tests for pipeline.records: the clip encoder read back by tf.data and tfrecord-lite, and dataset.json."""

import json

import numpy as np
import pytest
import tfrecord_lite
from apache_beam.io.tfrecordio import _TFRecordUtil

from pipeline import records
from pipeline.records import ContractError, DatasetSpec

T = 4


def _clip(label=2, video_id="walk/v_Walk_g01_c01.mp4"):
    frames = [bytes([i]) * (10 + i) for i in range(T)]
    return dict(
        frames=frames,
        label=label,
        label_name="walk",
        video_id=video_id,
        frame_indices=[0, 3, 7, 2**40],
        timestamps=[0.0, 0.125, 0.25, 1e3],
    )


def _write(path, serialized):
    with open(path, "wb") as handle:
        for s in serialized:
            _TFRecordUtil.write_record(handle, s)


def test_round_trip_tf_data_static_shapes(tmp_path):
    import tensorflow as tf

    clip = _clip()
    path = tmp_path / records.shard_name("train", 0, 1)
    _write(path, [records.encode_clip(**clip)] * 3)
    ds = tf.data.TFRecordDataset([str(path)]).batch(3).map(
        lambda x: tf.io.parse_example(x, records.tf_feature_spec(T))
    )
    (batch,) = list(ds)
    assert batch["frames"].shape == (3, T)
    assert batch["frame_indices"].shape == (3, T)
    assert batch["label"].shape == (3, 1)
    assert [f for f in batch["frames"][0].numpy()] == clip["frames"]
    assert batch["frame_indices"][0].numpy().tolist() == clip["frame_indices"]
    np.testing.assert_allclose(batch["timestamps"][0].numpy(), clip["timestamps"])
    assert batch["label"][0, 0] == 2
    assert batch["label_name"][0, 0].numpy() == b"walk"
    assert batch["video_id"][0, 0].numpy() == clip["video_id"].encode()


def test_round_trip_tfrecord_lite(tmp_path):
    clip = _clip(label=0, video_id="ünïcode/ä b.mp4")
    path = tmp_path / records.shard_name("test", 0, 1)
    _write(path, [records.encode_clip(**clip)])
    (raw,) = list(tfrecord_lite.tf_record_iterator(str(path)))
    decoded = records.decode_clip(records.encode_clip(**clip))
    assert raw["frames"] == clip["frames"]
    assert decoded["video_id"] == clip["video_id"]
    assert decoded["label"] == 0 and decoded["label_name"] == "walk"
    assert decoded["frame_indices"] == clip["frame_indices"]
    assert decoded["timestamps"] == pytest.approx(clip["timestamps"])


def test_encode_rejects_ragged_clip():
    clip = _clip()
    clip["timestamps"] = clip["timestamps"][:-1]
    with pytest.raises(ContractError, match="must equal sequence_length"):
        records.encode_clip(**clip)


def test_decode_names_missing_keys():
    with pytest.raises(ContractError, match="lacks feature"):
        records.decode_clip(records._example({"frames": records._bytes_feature([b"x"])}))


def test_decode_garbage_is_a_contract_error():
    with pytest.raises(ContractError, match="not a tf.train.Example"):
        records.decode_clip(b"\xff\x00garbage")


def test_shard_names():
    assert records.shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"
    assert records.shard_name("val", 0, 1, compressed=True) == "val-00000-of-00001.tfrecord.gz"
    assert records.shard_pattern("test") == "test-*-of-*.tfrecord"


def _spec(**overrides):
    values = dict(
        sequence_length=8, height=32, width=48, channels=3, frame_encoding="jpeg", classes=("a", "b"),
        splits={"train": {"clips": 4, "videos": 2}}, errors=1, sampling={"fps": 8.0},
    )
    values.update(overrides)
    return DatasetSpec(**values)


def test_dataset_json_round_trip(tmp_path):
    spec = _spec()
    assert spec.clip_shape == (8, 32, 48, 3) and spec.num_classes == 2
    data = json.loads(spec.to_json())
    assert list(data)[:2] == ["format", "format_version"] and data["classes"] == ["a", "b"]
    assert data["format"] == records.FORMAT_MARKER
    (tmp_path / records.DATASET_JSON).write_text(spec.to_json())
    assert records.read_spec(str(tmp_path)) == spec


@pytest.mark.parametrize(
    "change, message",
    [
        ({"format_version": 99}, "format_version 99"),
        ({"height": 0}, "height must be a positive integer"),
        ({"frame_encoding": "webp"}, "frame_encoding 'webp'"),
        ({"classes": ["a", "a"]}, "unique"),
        ({"extra": 1}, "unknown key"),
        ({"format": "something-else"}, "not a records folder written by python -m pipeline"),
    ],
)
def test_dataset_json_validation(change, message):
    data = {**_spec().to_dict(), **change}
    with pytest.raises(ContractError, match=message):
        DatasetSpec.from_dict(data)


def test_dataset_json_from_before_the_marker_is_still_read(tmp_path):
    data = _spec().to_dict()
    del data["format"]
    (tmp_path / records.DATASET_JSON).write_text(json.dumps(data))
    assert records.read_spec(str(tmp_path)) == _spec()


def test_dataset_json_keeps_the_decode_counts_and_reads_files_written_before_them(tmp_path):
    decode = {"mode": "auto", "frames_decoded": 900, "frames_kept": 24, "videos_seek": 1, "videos_sequential": 0,
              "videos_shorter_than_stated": 0}  # fmt: skip
    spec = _spec(decode=decode)
    assert json.loads(spec.to_json())["decode"] == decode
    (tmp_path / records.DATASET_JSON).write_text(spec.to_json())
    assert records.read_spec(str(tmp_path)).decode == decode
    older = _spec().to_dict()
    del older["decode"]  # a dataset.json from before the decode key
    (tmp_path / records.DATASET_JSON).write_text(json.dumps(older))
    assert records.read_spec(str(tmp_path)) == _spec() and records.read_spec(str(tmp_path)).decode == {}


def test_read_spec_missing_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="run preprocessing first"):
        records.read_spec(str(tmp_path))


def test_shape_contract_messages():
    records.check_clip_shape((8, 32, 32, 3), (None, 32, 32, 3))
    with pytest.raises(ContractError, match=r"records are \(16, 64, 64, 3\) but the model expects \(8, 64, 64, 3\)"):
        records.check_clip_shape((16, 64, 64, 3), (8, 64, 64, 3))
    with pytest.raises(ContractError, match="time axis is missing"):
        records.check_clip_shape((8, 64, 64, 3), (64, 64, 3))
