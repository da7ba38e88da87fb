"""Tests of training.config: the model/train/evaluate sections are validated when built."""

from __future__ import annotations

import os

import pytest

from pipeline.config import ConfigError, load_section
from training.config import AugmentConfig, EvaluateConfig, ModelConfig, TrainConfig

PARAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "params.yaml")


def test_params_yaml_sections_are_valid():
    model = load_section(ModelConfig, PARAMS, "model")
    assert model.rnn in ("lstm", "gru")
    train = load_section(TrainConfig, PARAMS, "train")
    assert train.epochs > 0 and train.batch_size > 0 and train.learning_rate > 0 and isinstance(train.seed, int)
    assert train.augment.horizontal_flip is False  # flipping swaps left/right: off for the demo
    load_section(EvaluateConfig, PARAMS, "evaluate")


def test_code_defaults_are_safe():
    assert AugmentConfig().horizontal_flip is False
    assert ModelConfig().backbone_weights is None  # nothing to download, nothing to look for


def test_values_are_coerced_from_yaml():
    cfg = load_section(ModelConfig, {"model": {"conv_filters": [8, 16], "rnn": "gru", "dropout": 0}}, "model")
    assert cfg.conv_filters == (8, 16) and cfg.rnn == "gru" and cfg.dropout == 0.0
    train = load_section(TrainConfig, {"train": {"augment": {"brightness": 0.2}, "learning_rate": 1}}, "train")
    assert train.augment == AugmentConfig(brightness=0.2) and train.learning_rate == 1.0


@pytest.mark.parametrize(
    ("section", "cls", "values", "message"),
    [
        ("model", ModelConfig, {"lstm_units": 64}, "unknown key model.lstm_units"),
        ("train", TrainConfig, {"epochs": "ten"}, "train.epochs must be an integer"),
        ("train", TrainConfig, {"batch_size": 0}, "train.batch_size must be a positive integer"),
        ("train", TrainConfig, {"learning_rate": True}, "train.learning_rate must be a number"),
        ("train", TrainConfig, {"augment": {"flip": True}}, "unknown key train.augment.flip"),
        ("train", TrainConfig, {"augment": {"brightness": 2.0}}, "train.augment.brightness must be in [0, 1]"),
        ("train", TrainConfig, {"lr_schedule": "step"}, "train.lr_schedule must be one of"),
        ("model", ModelConfig, {"rnn": "transformer"}, "model.rnn must be one of"),
        ("model", ModelConfig, {"conv_filters": [16, "x"]}, "model.conv_filters[1] must be an integer"),
        ("model", ModelConfig, {"dropout": 1.0}, "model.dropout must be in [0, 1)"),
        ("model", ModelConfig, {"backbone_weights": "w.h5"}, "model.backbone_weights needs model.backbone"),
        ("model", ModelConfig, {"backbone": "mobilenet_v3_small"}, "model.normalization must be symmetric"),
        (
            "model", ModelConfig, {"backbone": "mobilenet_v3_small", "normalization": "symmetric"},
            "model.with_frames must be false with backbone mobilenet_v3_small",
        ),
        ("model", ModelConfig, {"temporal_input": "flow"}, "model.temporal_input must be one of"),
        ("evaluate", EvaluateConfig, {"top_k": 0}, "evaluate.top_k must be a positive integer"),
    ],
)
def test_bad_values_name_the_key(section, cls, values, message):
    with pytest.raises(ConfigError) as info:
        load_section(cls, {section: values}, section)
    assert message in str(info.value)
    assert "\n" not in str(info.value)
