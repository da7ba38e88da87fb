"""Tests of training.data: static shapes, decoding, clip-consistent augmentation, empty splits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from training_fixtures import write_records

from pipeline import records
from vidseq.params import AugmentConfig
from training.data import augment_clip, make_dataset
from training.shards import EmptySplitError, count_clips

CLASSES = ("left", "right", "zoom_in")


@pytest.fixture(scope="module")
def jpeg_records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("jpeg"))
    spec = write_records(directory, classes=CLASSES, videos_per_class={"train": 2, "val": 1, "test": 1},
                         sequence_length=5, height=24, width=20)  # fmt: skip
    return directory, spec


@pytest.mark.parametrize(("encoding", "compressed"), [("jpeg", False), ("png", True)])
def test_element_spec_is_static_and_values_decode(tmp_path, encoding, compressed):
    directory = str(tmp_path)
    spec = write_records(directory, classes=CLASSES, videos_per_class={"train": 2}, sequence_length=5,
                         height=24, width=20, encoding=encoding, compressed=compressed, shards=3)  # fmt: skip
    assert len(os.listdir(directory)) == 4  # 3 shards + dataset.json
    ds = make_dataset(directory, "train", spec, batch_size=4, training=True, augment=AugmentConfig(), seed=1)
    clip_spec, label_spec = ds.element_spec
    assert clip_spec.shape.as_list() == [None, 5, 24, 20, 3] and clip_spec.dtype == tf.float32
    assert label_spec.shape.as_list() == [None] and label_spec.dtype == tf.int32
    clips, labels = zip(*[(c.numpy(), lab.numpy()) for c, lab in ds])
    clips, labels = np.concatenate(clips), np.concatenate(labels)
    assert clips.shape == (12, 5, 24, 20, 3)  # 3 classes x 2 videos x 2 clips
    assert 0.0 <= clips.min() and clips.max() <= 1.0
    assert sorted(labels.tolist()) == [0] * 4 + [1] * 4 + [2] * 4


def test_eval_dataset_keeps_order_free_video_ids_and_pixels(jpeg_records):
    directory, spec = jpeg_records
    ds = make_dataset(directory, "test", spec, batch_size=2, with_video_id=True, drop_remainder=True)
    assert [s.shape.as_list() for s in ds.element_spec] == [[2, 5, 24, 20, 3], [2], [2]]
    seen = {}
    for clips, labels, video_ids in ds.as_numpy_iterator():
        for clip, label, vid in zip(clips, labels, video_ids):
            assert vid.decode().split("/")[0] == CLASSES[label]  # fixture ids are class/name
            seen.setdefault(vid, []).append(clip)
    assert len(seen) == 3 and all(len(v) == 2 for v in seen.values())
    # no augmentation outside training: decoding twice gives the same pixels
    again = next(make_dataset(directory, "test", spec, batch_size=6).as_numpy_iterator())[0]
    first = next(make_dataset(directory, "test", spec, batch_size=6).as_numpy_iterator())[0]
    np.testing.assert_array_equal(again, first)


def test_augmentation_is_identical_on_every_frame():
    frame = np.random.default_rng(0).random((24, 20, 3), dtype=np.float32)
    clip = tf.constant(np.repeat(frame[None], 6, axis=0))  # six identical frames
    cfg = AugmentConfig(crop_min_fraction=0.6, brightness=0.3, contrast=0.5, horizontal_flip=True)
    outputs = [augment_clip(clip, cfg, tf.constant([seed, 7], tf.int64)).numpy() for seed in range(8)]
    for out in outputs:
        assert out.shape == (6, 24, 20, 3)
        for t in range(1, 6):
            np.testing.assert_array_equal(out[t], out[0])  # same crop, brightness, contrast, flip
        assert not np.allclose(out[0], frame, atol=1e-3)  # and something did change
    assert not np.allclose(outputs[0], outputs[1])  # each clip draws its own parameters
    np.testing.assert_array_equal(outputs[0], augment_clip(clip, cfg, tf.constant([0, 7], tf.int64)).numpy())


def test_augmentation_keeps_motion_direction():
    """A bright column moving right still moves right after crop, brightness and contrast."""
    clip = np.zeros((4, 16, 16, 3), np.float32)
    for t in range(4):
        clip[t, :, 3 + 3 * t] = 1.0
    cfg = AugmentConfig(crop_min_fraction=0.8, brightness=0.1, contrast=0.1)
    for seed in range(5):
        out = augment_clip(tf.constant(clip), cfg, tf.constant([seed, 1], tf.int64)).numpy()
        columns = [int(np.argmax(out[t].mean(axis=(0, 2)))) for t in range(4)]
        assert columns == sorted(columns) and columns[0] < columns[-1]


def test_default_augmentation_does_not_flip():
    assert AugmentConfig().horizontal_flip is False


def test_training_order_and_augmentation_follow_the_seed(jpeg_records):
    directory, spec = jpeg_records

    def first_batch(seed):
        ds = make_dataset(directory, "train", spec, 4, training=True, augment=AugmentConfig(), seed=seed)
        return next(ds.as_numpy_iterator())

    a, b, c = first_batch(3), first_batch(3), first_batch(4)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_empty_split_is_a_clear_error(tmp_path):
    directory = str(tmp_path)
    spec = write_records(directory, classes=CLASSES, videos_per_class={"train": 1, "val": 0},
                         sequence_length=2, height=8, width=8)  # fmt: skip
    with pytest.raises(EmptySplitError, match="split 'val' has no clips"):
        make_dataset(directory, "val", spec, 2)
    with pytest.raises(EmptySplitError, match="split 'test' has no clips"):
        count_clips(directory, "test", spec)
    assert count_clips(directory, "train", spec) == 6


def test_frames_of_another_size_than_dataset_json_fail_clearly(tmp_path):
    directory = str(tmp_path)
    write_records(directory, classes=CLASSES, videos_per_class={"train": 1}, sequence_length=2, height=8, width=8)
    path = os.path.join(directory, records.DATASET_JSON)
    data = json.loads(open(path).read())
    data["height"] = 10
    spec = records.DatasetSpec.from_dict(data)
    with pytest.raises(tf.errors.InvalidArgumentError, match="differs from dataset.json"):
        next(iter(make_dataset(directory, "train", spec, 2)))
