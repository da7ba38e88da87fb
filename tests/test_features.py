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
from test_backbones import tiny_image_model
from training_fixtures import write_records

from pipeline import records
from training import artifacts, features, fit
from training.data import make_dataset
from training.metrics import predict_split
from training.model import load_keras_model, split_model
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


def test_head_trains_on_cached_features_and_the_saved_model_is_whole(setup, tmp_path, caplog):
    root, records_dir, backbone = setup
    model_cfg, train_cfg = configs(root, backbone)
    caplog.set_level(logging.INFO)
    result = fit.train(records_dir, str(tmp_path / "a"), model_cfg, train_cfg)
    assert "on cached features" in caplog.text and "train.augment is not applied" in caplog.text
    cached = sorted(glob.glob(os.path.join(train_cfg.feature_cache, "*.npz")))
    assert [os.path.basename(p).split("-")[0] for p in cached] == ["train", "val"]

    saved = load_keras_model(result.paths["model"])  # the file evaluate, register, serve and predict use
    assert saved.input_shape == (None, 4, 16, 16, 3)  # raw frames in
    spec = records.read_spec(records_dir)
    clips, _ = next(iter(make_dataset(records_dir, "train", spec, 64)))
    with np.load(next(p for p in cached if os.path.basename(p).startswith("train"))) as data:
        train_features = data["features"]
    _, head = split_model(saved)
    np.testing.assert_allclose(saved.predict(clips.numpy(), verbose=0), head.predict(train_features, verbose=0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert result.history["epoch"] == [0, 1, 2]

    caplog.clear()  # a second run reads the cache and trains the same model
    again = fit.train(records_dir, str(tmp_path / "b"), model_cfg, train_cfg)
    assert caplog.text.count("features from the cache") == 2
    assert sorted(glob.glob(os.path.join(train_cfg.feature_cache, "*.npz"))) == cached
    for a, b in zip(result.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_key_covers_the_backbone_weights_and_the_records(setup, tmp_path):
    root, records_dir, backbone = setup
    spec = records.read_spec(records_dir)
    model_cfg, _ = configs(root, backbone)
    from training.model import build_model

    feature_model, _ = split_model(build_model(spec, model_cfg))
    key = features.cache_key(records_dir, "train", spec, feature_model)
    assert key == features.cache_key(records_dir, "train", spec, split_model(build_model(spec, model_cfg))[0])
    assert key != features.cache_key(records_dir, "val", spec, feature_model)
    other = str(tmp_path / "other.keras")
    keras.utils.set_random_seed(7)
    tiny_image_model(other)  # the same architecture, other weights
    other_model, _ = split_model(build_model(spec, dataclasses.replace(model_cfg, backbone_file=other)))
    assert key != features.cache_key(records_dir, "train", spec, other_model)
    copy = tmp_path / "records"
    write_records(str(copy), classes=("left", "right"), videos_per_class={"train": 4, "val": 2, "test": 2},
                  sequence_length=4, height=16, width=16, seed=1)  # fmt: skip
    assert key != features.cache_key(str(copy), "train", spec, feature_model)


def test_evaluate_runs_the_backbone_once_and_agrees_with_the_frames(setup):
    root, records_dir, backbone = setup
    spec = records.read_spec(records_dir)
    model_cfg, _ = configs(root, backbone, head="rnn", rnn_units=4)
    from training.model import build_model

    model = build_model(spec, model_cfg)
    cfg = EvaluateConfig(batch_size=3)
    fast = predict_split(model, records_dir, spec, cfg)
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
