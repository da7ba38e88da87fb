"""Tests of vidseq.params: the one params schema, validated when loaded, equal to the shipped params.yaml."""

from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from vidseq.params import (
    AugmentConfig,
    ConfigError,
    ModelConfig,
    Params,
    PreprocessConfig,
    TrainConfig,
)
from vidseq.validation import flatten, from_mapping, read_yaml

PARAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "params.yaml")


def _keys(value, prefix=""):
    if isinstance(value, dict):
        return {k for name, v in value.items() for k in _keys(v, f"{prefix}{name}.")} | (
            {prefix.rstrip(".")} if prefix and not value else set()
        )
    return {prefix.rstrip(".")}


def test_the_shipped_params_yaml_is_the_schema_defaults():
    shipped = yaml.safe_load(open(PARAMS, encoding="utf-8"))
    assert Params.load(PARAMS) == Params()  # no default differs from params.yaml
    defaults = Params().as_dict()
    assert _keys(shipped) == _keys(defaults)  # every knob is written in params.yaml, none is extra
    assert Params.from_dict(shipped).as_dict() == shipped


def test_missing_and_empty_sections_give_defaults(tmp_path):
    assert Params.from_dict({}) == Params()
    path = tmp_path / "params.yaml"
    path.write_text("model:\ntrain:\n  epochs: 3\n")
    params = Params.load(str(path))
    assert params.model == ModelConfig() and params.train == TrainConfig(epochs=3)


def test_code_defaults_are_safe():
    assert AugmentConfig().horizontal_flip is False  # flipping swaps left/right: off for the demo
    assert ModelConfig().backbone_weights is None  # nothing to download, nothing to look for


def test_values_are_typed_and_frozen():
    params = Params.from_dict({
        "preprocess": {"fps": 10, "splits": {"train": 0.8, "val": 0.2}},
        "model": {"conv_filters": [8, 16], "rnn": "gru", "dropout": 0},
        "train": {"augment": {"brightness": 0.2}, "learning_rate": 1},
    })  # fmt: skip
    assert params.preprocess.fps == 10.0 and isinstance(params.preprocess.fps, float)
    assert params.preprocess.as_dict()["splits"] == {"train": 0.8, "val": 0.2}
    assert params.model.conv_filters == (8, 16) and params.model.rnn == "gru" and params.model.dropout == 0.0
    assert params.train.augment == AugmentConfig(brightness=0.2) and params.train.learning_rate == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.preprocess.fps = 3.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train = TrainConfig()  # type: ignore[misc]


@pytest.mark.parametrize("splits", [{"test": 1.0}, {"val": 1.0}, {"train": 0.7, "test": 0.3}, {"train": 1.0, "val": 0.0}])
def test_splits_may_name_any_subset_of_train_val_test(splits):
    assert Params.from_dict({"preprocess": {"splits": splits}}).preprocess.splits == splits


@pytest.mark.parametrize(
    "values, message",
    [
        ({"preprocess": {"sequence_length": -1}}, "preprocess.sequence_length must be a positive integer"),
        ({"preprocess": {"sequence_length": 8.5}}, "preprocess.sequence_length must be an integer"),
        ({"preprocess": {"sequence_length": True}}, "preprocess.sequence_length must be an integer"),
        ({"preprocess": {"fps": "fast"}}, "preprocess.fps must be a number"),
        ({"preprocess": {"short_video": "drop"}}, "preprocess.short_video must be one of 'pad', 'loop', 'skip'"),
        ({"preprocess": {"sequnce_length": 8}}, "unknown key preprocess.sequnce_length"),
        ({"preprocess": {"splits": {"train": 0.5, "val": 0.1}}}, "preprocess.splits fractions must add up to 1"),
        ({"preprocess": {"splits": {"train": 0.9, "dev": 0.1}}}, "preprocess.splits.dev is not a split"),
        ({"preprocess": {"jpeg_quality": 0}}, "preprocess.jpeg_quality must be in 1..100"),
        ({"preprocess": {"max_error_fraction": 1.5}}, "preprocess.max_error_fraction must be in [0, 1]"),
        ({"preprocess": {"compression": "zip"}}, "preprocess.compression must be one of 'none', 'gzip'"),
        ({"preprocess": 3}, "preprocess must be a mapping"),
        ({"preproces": {}}, "unknown section preproces"),
        ({"data": {"synth_videos_per_class": 0}}, "data.synth_videos_per_class must be positive"),
        ({"data": {"name": "my videos"}}, "data.name must be letters, digits"),
        ({"model": {"lstm_units": 64}}, "unknown key model.lstm_units"),
        ({"train": {"epochs": "ten"}}, "train.epochs must be an integer"),
        ({"train": {"batch_size": 0}}, "train.batch_size must be a positive integer"),
        ({"train": {"learning_rate": True}}, "train.learning_rate must be a number"),
        ({"train": {"augment": {"flip": True}}}, "unknown key train.augment.flip"),
        ({"train": {"augment": {"brightness": 2.0}}}, "train.augment.brightness must be in [0, 1]"),
        ({"train": {"lr_schedule": "step"}}, "train.lr_schedule must be one of"),
        ({"model": {"rnn": "transformer"}}, "model.rnn must be one of"),
        ({"model": {"conv_filters": [16, "x"]}}, "model.conv_filters[1] must be an integer"),
        ({"model": {"dropout": 1.0}}, "model.dropout must be in [0, 1)"),
        ({"model": {"change_gain": 0}}, "model.change_gain must be > 0"),
        ({"model": {"backbone": "MobileNetV2"}}, "model.backbone must be one of cnn, mobilenet_v2, "),
        ({"model": {"backbone_weights": "w.h5"}}, "model.backbone_weights must be one of"),
        ({"model": {"backbone_weights": "imagenet"}}, "model.backbone_weights is for a Keras Applications backbone"),
        (
            {"model": {"backbone": "mobilenet_v2"}},
            "model.with_frames must be false with backbone mobilenet_v2 and temporal_input difference",
        ),
        (
            {"model": {"backbone": "mobilenet_v2", "temporal_input": "frames", "normalization": "symmetric"}},
            "model.normalization must be unit with backbone mobilenet_v2: it scales",
        ),
        ({"model": {"backbone": "file", "temporal_input": "frames"}}, "model.backbone_file must be a .keras image model"),
        (
            {"model": {"backbone": "resnet50", "temporal_input": "frames", "backbone_weights": "file"}},
            "model.backbone_file must be a weights file",
        ),
        ({"model": {"freeze_backbone": True}}, "model.freeze_backbone needs a pretrained model.backbone"),
        ({"model": {"statistics": ["mean", "median"]}}, "model.statistics must list some of mean, std, change"),
        ({"model": {"head": "attention"}}, "model.head must be one of"),
        ({"train": {"fine_tune_epochs": 3}}, "train.fine_tune_epochs and train.fine_tune_layers go together"),
        (
            {"train": {"fine_tune_epochs": 3, "fine_tune_layers": 20}},
            "train.fine_tune_epochs fine-tunes a frozen pretrained backbone",
        ),
        ({"model": {"temporal_input": "flow"}}, "model.temporal_input must be one of"),
        ({"evaluate": {"top_k": 0}}, "evaluate.top_k must be a positive integer"),
        ({"register": {"model_name": "a b"}}, "register.model_name must be letters"),
        ({"register": {"min_accuracy": 2}}, "register.min_accuracy must be in [0, 1]"),
        ({"mlflow": {"experiment_name": " "}}, "mlflow.experiment_name must not be empty"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        Params.from_dict(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_reading_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Params.load(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        Params.load(str(listy))


def test_a_section_rebuilds_from_dataset_json_sampling():
    cfg = PreprocessConfig(sequence_length=4, fps=5.0)
    assert from_mapping(PreprocessConfig, cfg.as_dict(), "dataset.json sampling") == cfg


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": 1, "a.c.d": "x", "e": 2}
