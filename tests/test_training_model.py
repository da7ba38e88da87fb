"""Tests of training.model and the data/model shape contract (training.data.check_compatible)."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from pipeline.records import ContractError, DatasetSpec
from vidseq.params import ModelConfig
from training.data import check_compatible
from training.model import TINY, build_model, build_tiny_model

SPEC = DatasetSpec(sequence_length=4, height=16, width=16, channels=3, frame_encoding="jpeg", classes=("a", "b", "c"))


def test_tiny_model_shapes_and_parameter_count():
    model = build_tiny_model(SPEC)
    assert model.input_shape == (None, 4, 16, 16, 3)
    assert model.output_shape == (None, 3)
    assert model.get_layer("per_frame").output.shape == (None, 3, 16)  # T - 1 differences
    conv1 = 3 * 3 * 6 * 4 + 4  # frames + differences: 6 channels; 16x16 -> pool -> 8x8x4
    conv2 = 3 * 3 * 4 * 8 + 8  # 8x8 -> pool -> 4x4x8, flattened to 128
    frame_features = 4 * 4 * 8 * 16 + 16
    lstm = 4 * (8 * (16 + 8) + 8)
    dense = 8 * 3 + 3
    assert model.count_params() == conv1 + conv2 + frame_features + lstm + dense == 3407
    probs = model.predict(np.random.default_rng(0).random((2, 4, 16, 16, 3), dtype=np.float32), verbose=0)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_model_shape_comes_from_the_spec():
    spec = dataclasses.replace(SPEC, sequence_length=6, height=24, width=20, classes=tuple("abcdefg"))
    model = build_model(spec, ModelConfig(conv_filters=(4, 8, 8), frame_features=8, rnn_units=8))
    assert model.input_shape == (None, 6, 24, 20, 3)
    assert model.output_shape == (None, 7)


@pytest.mark.parametrize(
    "overrides",
    [
        {"rnn": "gru", "bidirectional": True, "rnn_layers": 2},
        {"frame_pooling": "global_avg", "frame_features": 0, "pooling": "avg", "convs_per_block": 2},
        {"frame_pooling": "global_max", "normalization": "imagenet", "batch_norm": True},
        {"normalization": "symmetric", "dropout": 0.5},
        {"temporal_input": "clip_mean", "with_frames": False},
        {"temporal_input": "frames"},
    ],
)
def test_options_build(overrides):
    cfg = dataclasses.replace(TINY, **overrides)
    model = build_model(SPEC, cfg)
    assert model.output_shape == (None, 3)
    assert model.predict(np.zeros((1, 4, 16, 16, 3), np.float32), verbose=0).shape == (1, 3)


def test_difference_input_is_what_moves():
    """With temporal_input difference and no frames, a static clip gives the same output as zeros."""
    model = build_model(SPEC, dataclasses.replace(TINY, with_frames=False))
    static = np.repeat(np.random.default_rng(2).random((1, 1, 16, 16, 3), dtype=np.float32), 4, axis=1)
    np.testing.assert_allclose(
        model.predict(static, verbose=0), model.predict(np.zeros_like(static), verbose=0), rtol=1e-5
    )


def test_difference_needs_two_frames():
    with pytest.raises(ValueError, match="needs clips of 2 or more frames"):
        build_model(dataclasses.replace(SPEC, sequence_length=1), TINY)


def test_saved_model_round_trips(tmp_path):
    model = build_tiny_model(SPEC)
    path = str(tmp_path / "model.keras")
    model.save(path)
    clips = np.random.default_rng(1).random((2, 4, 16, 16, 3), dtype=np.float32)
    np.testing.assert_allclose(keras.saving.load_model(path).predict(clips, verbose=0), model.predict(clips, verbose=0))


# --------------------------------------------------------------------------- shape contract


def test_matching_data_passes():
    model = build_tiny_model(SPEC)
    check_compatible(model, SPEC, SPEC)
    check_compatible(model, np.zeros((5, 4, 16, 16, 3)))


def test_wrong_sequence_length_names_both_shapes_and_the_fix():
    model = build_tiny_model(SPEC)
    with pytest.raises(ContractError) as info:
        check_compatible(model, dataclasses.replace(SPEC, sequence_length=8))
    message = str(info.value)
    assert "records are (8, 16, 16, 3) but the model expects (4, 16, 16, 3)" in message
    assert "re-run preprocessing" in message and "rebuild the model" in message


def test_wrong_frame_size_is_an_error():
    model = build_tiny_model(SPEC)
    with pytest.raises(ContractError, match=r"records are \(4, 32, 16, 3\) but the model expects \(4, 16, 16, 3\)"):
        check_compatible(model, np.zeros((2, 4, 32, 16, 3)))


def test_a_batch_of_single_images_says_the_time_axis_is_missing():
    model = build_tiny_model(SPEC)
    with pytest.raises(ContractError, match="the time axis is missing") as info:
        check_compatible(model, np.zeros((10, 16, 16, 3)))  # the seed note's classic mistake
    assert "TimeDistributed" in str(info.value)


def test_wrong_class_count_is_an_error():
    model = build_tiny_model(SPEC)
    with pytest.raises(ContractError, match="records have 2 classes .* but the model outputs 3"):
        check_compatible(model, SPEC, dataclasses.replace(SPEC, classes=("a", "b")))
