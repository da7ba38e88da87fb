"""Tests of the frozen-feature path (training.features, training.fit): features cached once under a key of
records and backbone, the head trained on them, the saved model whole and giving the head's predictions."""

from __future__ import annotations

import dataclasses
import glob
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from test_backbones import tiny_image_model
from training_fixtures import write_records

from pipeline import records
from training import artifacts, features, fit
from training.data import make_dataset
from training.metrics import predict_split
from training.model import load_keras_model, split_model
from training.shards import record_dataset, shard_files
from vidseq.params import AugmentConfig, EvaluateConfig, ModelConfig, TrainConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    records_dir = str(root / "records")
    write_records(records_dir, classes=("left", "right"), videos_per_class={"train": 4, "val": 2, "test": 2},
                  sequence_length=4, height=16, width=16)  # fmt: skip
    backbone = str(root / "image.keras")
    tiny_image_model(backbone)
    return root, records_dir, backbone


def configs(root, backbone, **model):
    values = {"backbone": "file", "backbone_file": backbone, "freeze_backbone": True, "temporal_input": "frames",
              "head": "temporal_stats", "l2": 0.1, **model}  # fmt: skip
    train = TrainConfig(epochs=3, batch_size=4, feature_cache=str(root / "cache"), augment=AugmentConfig())
    return ModelConfig(**values), train


def frame_features(setup):
    """``(records_dir, spec, feature model)`` of the frames-in configuration."""
    root, records_dir, backbone = setup
    spec = records.read_spec(records_dir)
    from training.model import build_model

    return records_dir, spec, split_model(build_model(spec, configs(root, backbone)[0]))[0]


def packs(cache):
    return sorted(glob.glob(os.path.join(cache, "*", "*.clips")))


@pytest.mark.parametrize("temporal_input", ["frames", "difference"])
def test_head_trains_on_cached_features_and_the_saved_model_is_whole(setup, tmp_path, caplog, temporal_input):
    root, records_dir, backbone = setup
    model_cfg, train_cfg = configs(root, backbone, temporal_input=temporal_input, with_frames=False)
    train_cfg = dataclasses.replace(train_cfg, feature_cache=str(tmp_path / "cache"))
    caplog.set_level(logging.INFO)
    result = fit.train(records_dir, str(tmp_path / "a"), model_cfg, train_cfg)
    assert "on cached features" in caplog.text
    assert "train.augment's crop, brightness and contrast are not applied" in caplog.text
    assert "train: 16 clips' features, 0 from the cache" in caplog.text
    assert len(packs(train_cfg.feature_cache)) == 2  # train and val, one pack each

    saved = load_keras_model(result.paths["model"])  # the file evaluate, register, serve and predict use
    assert saved.input_shape == (None, 4, 16, 16, 3)  # raw frames in
    spec = records.read_spec(records_dir)
    clips, _ = next(iter(make_dataset(records_dir, "train", spec, 64)))
    feature_model, head = split_model(saved)
    cached = features.split_features(records_dir, "train", spec, feature_model, train_cfg.feature_cache)
    np.testing.assert_allclose(saved.predict(clips.numpy(), verbose=0), head.predict(cached["features"], verbose=0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert result.history["epoch"] == [0, 1, 2]

    caplog.clear()  # a second run reads the cache and trains the same model
    again = fit.train(records_dir, str(tmp_path / "b"), model_cfg, train_cfg)
    assert "train: 16 clips' features, 16 from the cache" in caplog.text
    assert "val: 8 clips' features, 8 from the cache" in caplog.text and "features of" not in caplog.text
    assert len(packs(train_cfg.feature_cache)) == 2
    for a, b in zip(result.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_clip_is_computed_once_whatever_its_split_or_records_folder(setup, tmp_path, caplog):
    """A fold of a cross-validation puts cached clips in other splits and other folders: they are not run again."""
    records_dir, spec, feature_model = frame_features(setup)
    cache = str(tmp_path / "cache")
    first = features.split_features(records_dir, "train", spec, feature_model, cache)
    other = str(tmp_path / "fold-2")  # train's and test's clips, in another split, order and shard file
    serialized = [r for split in ("test", "train") for r in record_dataset(shard_files(records_dir, split, spec), spec)]
    os.makedirs(other)
    with tf.io.TFRecordWriter(os.path.join(other, records.shard_name("val", 0, 1, False))) as writer:
        for record in serialized[::-1]:
            writer.write(record.numpy())
    with open(os.path.join(other, records.DATASET_JSON), "w", encoding="utf-8") as handle:
        handle.write(dataclasses.replace(spec, splits={"val": {"clips": 24, "videos": 12}}).to_json())
    caplog.set_level(logging.INFO)
    moved = features.split_features(other, "val", records.read_spec(other), feature_model, cache)
    assert "val: 24 clips' features, 16 from the cache" in caplog.text  # only test's 8 clips were run
    assert set(first["video_ids"]) < set(moved["video_ids"])
    fresh = features.compute_features(str(other), "val", records.read_spec(str(other)), feature_model)
    np.testing.assert_allclose(moved["features"], fresh["features"], rtol=1e-5, atol=1e-6)
    assert list(moved["video_ids"]) == list(fresh["video_ids"]) and list(moved["labels"]) == list(fresh["labels"])


def test_the_key_covers_the_clip_content_and_the_backbone_weights(setup, tmp_path):
    root, records_dir, backbone = setup
    spec = records.read_spec(records_dir)
    clips = features.split_clips(records_dir, "train", spec)
    assert len(set(clips["keys"])) == len(clips["keys"]) == 16
    frames = [b"a" * 10, b"b" * 10]
    assert features.clip_key(spec, frames) == features.clip_key(spec, list(frames))
    assert features.clip_key(spec, frames) != features.clip_key(spec, frames[::-1])  # the order is content
    assert features.clip_key(spec, [b"ab", b"c"]) != features.clip_key(spec, [b"a", b"bc"])
    assert features.clip_key(spec, frames) != features.clip_key(dataclasses.replace(spec, frame_encoding="png"), frames)

    model_cfg, _ = configs(root, backbone)
    from training.model import build_model

    digest = features.model_digest(split_model(build_model(spec, model_cfg))[0])
    assert digest == features.model_digest(split_model(build_model(spec, model_cfg))[0])
    other = str(tmp_path / "other.keras")
    keras.utils.set_random_seed(7)
    tiny_image_model(other)  # the same architecture, other weights
    assert digest != features.model_digest(split_model(build_model(spec, dataclasses.replace(model_cfg, backbone_file=other)))[0])
    differences = dataclasses.replace(model_cfg, temporal_input="difference", with_frames=False)
    assert digest != features.model_digest(split_model(build_model(spec, differences))[0])


def test_horizontal_flip_adds_each_training_clips_mirror_image_cached_like_the_clip(setup, tmp_path, caplog):
    root, records_dir, backbone = setup
    model_cfg, train_cfg = configs(root, backbone, temporal_input="difference", with_frames=False)
    train_cfg = dataclasses.replace(train_cfg, feature_cache=str(tmp_path / "cache"), epochs=1,
                                    augment=AugmentConfig(crop_min_fraction=1.0, brightness=0.0, contrast=0.0, horizontal_flip=True))  # fmt: skip
    caplog.set_level(logging.INFO)
    fit.train(records_dir, str(tmp_path / "a"), model_cfg, train_cfg)
    assert "train: 16 mirrored clips' features, 0 from the cache" in caplog.text
    assert "are not applied" not in caplog.text  # only the flip is asked for, and it is applied
    spec = records.read_spec(records_dir)
    from training.model import build_model

    feature_model, _ = split_model(build_model(spec, model_cfg))
    mirrored = features.split_features(records_dir, "train", spec, feature_model, train_cfg.feature_cache, mirrored=True)
    clips = np.concatenate([c for c, _ in make_dataset(records_dir, "train", spec, 64).as_numpy_iterator()])
    np.testing.assert_allclose(mirrored["features"], feature_model.predict(clips[:, :, :, ::-1], verbose=0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    plain = features.split_features(records_dir, "train", spec, feature_model, train_cfg.feature_cache)
    assert not np.allclose(mirrored["features"], plain["features"])
    assert len(packs(train_cfg.feature_cache)) == 3  # train, val, train mirrored


def test_a_pack_a_killed_run_left_without_its_key_list_is_ignored(setup, tmp_path):
    records_dir, spec, feature_model = frame_features(setup)
    cache = str(tmp_path / "cache")
    first = features.split_features(records_dir, "test", spec, feature_model, cache)
    (key_list,) = packs(cache)
    os.remove(key_list)  # as if killed between writing the features and their keys
    folder = os.path.dirname(key_list)
    with open(os.path.join(folder, "junk.npy.tmp"), "wb") as handle:
        handle.write(b"half a file")
    assert features.FeatureStore(folder)._index == {}
    again = features.split_features(records_dir, "test", spec, feature_model, cache)
    np.testing.assert_array_equal(first["features"], again["features"])
    assert len(packs(cache)) == 1


@pytest.mark.parametrize("temporal_input", ["frames", "difference"])
def test_evaluate_runs_the_backbone_once_and_agrees_with_the_frames(setup, tmp_path, temporal_input):
    """Per-frame features are shuffled and reversed as they are; features of frame differences are computed
    from the shuffled and reversed frames (their differences are others): either way what the whole model says."""
    root, records_dir, backbone = setup
    spec = records.read_spec(records_dir)
    model_cfg, _ = configs(root, backbone, head="rnn", rnn_units=4, temporal_input=temporal_input, with_frames=False)
    from training.model import build_model, per_frame_features

    model = build_model(spec, model_cfg)
    assert per_frame_features(split_model(model)[0]) == (temporal_input == "frames")
    cfg = EvaluateConfig(batch_size=3)
    fast = predict_split(model, records_dir, spec, cfg, feature_cache=str(tmp_path / "cache"))
    ds = make_dataset(records_dir, "test", spec, cfg.batch_size)
    rng = np.random.default_rng(cfg.shuffle_seed)
    from training.metrics import shuffle_time

    slow = {"probs": [], "shuffled_probs": [], "reversed_probs": []}
    for clips, _ in ds.as_numpy_iterator():
        slow["probs"].append(model.predict_on_batch(clips))
        slow["shuffled_probs"].append(model.predict_on_batch(shuffle_time(clips, rng)))
        slow["reversed_probs"].append(model.predict_on_batch(clips[:, ::-1]))
    for key, values in slow.items():
        np.testing.assert_allclose(fast[key], np.concatenate(values), rtol=1e-4, atol=1e-5)


def test_fine_tuning_continues_end_to_end_on_the_frames(setup, tmp_path, caplog):
    root, records_dir, backbone = setup
    model_cfg, train_cfg = configs(root, backbone)
    train_cfg = dataclasses.replace(train_cfg, fine_tune_layers=2, fine_tune_epochs=2, fine_tune_learning_rate=1e-3)
    caplog.set_level(logging.INFO)
    result = fit.train(records_dir, str(tmp_path / "tuned"), model_cfg, train_cfg)
    assert "fine-tuning 1 layers of tiny_image_model" in caplog.text  # the top 2: its BatchNormalization stays frozen
    assert result.history["epoch"] == [0, 1, 2, 3, 4]  # 3 on features, 2 fine-tuning
    with open(os.path.join(tmp_path / "tuned", artifacts.HISTORY_CSV)) as handle:
        assert len(handle.read().strip().splitlines()) == 6
