"""Tests of training.heads: the temporal statistics are numpy's, a head trains alone, models holding it load."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from pipeline.records import DatasetSpec
from training.heads import TemporalStatistics, build_head
from training.model import TINY, build_model
from vidseq.params import ModelConfig

FEATURES = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)


def test_temporal_statistics_are_mean_std_and_mean_absolute_change():
    out = np.asarray(TemporalStatistics()(FEATURES))
    expected = np.concatenate(
        [FEATURES.mean(1), FEATURES.std(1), np.abs(np.diff(FEATURES, axis=1)).mean(1)], axis=1
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    only = np.asarray(TemporalStatistics(("change", "std"))(FEATURES))  # always in the order mean, std, change
    np.testing.assert_allclose(only, expected[:, 4:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty subset"):
        TemporalStatistics(("median",))


def test_change_is_the_only_statistic_that_sees_the_order():
    layer = TemporalStatistics()
    shuffled = FEATURES[:, [3, 0, 4, 1, 2]]
    a, b = np.asarray(layer(FEATURES)), np.asarray(layer(shuffled))
    np.testing.assert_allclose(a[:, :8], b[:, :8], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 8:], b[:, 8:])


def test_stats_head_is_a_regularised_logistic_regression_on_the_statistics():
    cfg = ModelConfig(head="temporal_stats", statistics=("std", "change"), standardize=True, l2=0.5, dropout=0.2)
    head = build_head(5, 4, cfg, 3)
    dense = head.get_layer("probabilities")
    assert dense.kernel.shape == (8, 3)  # 2 statistics x 4 features -> 3 classes, nothing between
    assert head.count_params() == 8 * 3 + 3 + 2 * 8 + 1  # the Dense, and the Normalization's mean/variance/count
    assert isinstance(dense.kernel_regularizer, keras.regularizers.L2)
    assert dense.kernel_regularizer.l2 == pytest.approx(0.5)


def test_a_video_model_with_the_stats_head_saves_and_loads(tmp_path):
    spec = DatasetSpec(sequence_length=4, height=16, width=16, channels=3, frame_encoding="jpeg", classes=("a", "b"))
    model = build_model(spec, dataclasses.replace(TINY, head="temporal_stats", standardize=False))
    path = str(tmp_path / "model.keras")
    model.save(path)
    clips = np.random.default_rng(1).random((2, 4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(clips, verbose=0), model.predict(clips, verbose=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
