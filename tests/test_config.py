"""Tests for pipeline.config: params.yaml sections into validated frozen dataclasses."""

import dataclasses

import pytest

from pipeline.config import (
    ConfigError,
    DataConfig,
    PreprocessConfig,
    flatten,
    from_mapping,
    load_section,
    read_params,
)


def test_repo_params_yaml_is_valid():
    params = read_params("params.yaml")
    cfg = load_section(PreprocessConfig, params, "preprocess")
    assert cfg.sequence_length > 0 and cfg.channels == 3
    assert abs(sum(cfg.splits.values()) - 1) < 1e-9
    load_section(DataConfig, params, "data")


def test_missing_section_gives_defaults():
    assert load_section(PreprocessConfig, {}, "preprocess") == PreprocessConfig()


def test_values_are_typed_and_frozen():
    cfg = from_mapping(PreprocessConfig, {"fps": 10, "splits": {"train": 0.8, "val": 0.2}}, "preprocess")
    assert cfg.fps == 10.0 and isinstance(cfg.fps, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.fps = 3.0  # type: ignore[misc]
    assert cfg.as_dict()["splits"] == {"train": 0.8, "val": 0.2}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sequence_length": -1}, "preprocess.sequence_length must be a positive integer"),
        ({"sequence_length": 8.5}, "preprocess.sequence_length must be an integer"),
        ({"sequence_length": True}, "preprocess.sequence_length must be an integer"),
        ({"fps": "fast"}, "preprocess.fps must be a number"),
        ({"short_video": "drop"}, "preprocess.short_video must be one of 'pad', 'loop', 'skip'"),
        ({"sequnce_length": 8}, "unknown key preprocess.sequnce_length"),
        ({"splits": {"train": 0.5, "val": 0.1}}, "preprocess.splits fractions must add up to 1"),
        ({"splits": {"train": 0.9, "dev": 0.1}}, "preprocess.splits.dev is not a split"),
        ({"jpeg_quality": 0}, "preprocess.jpeg_quality must be in 1..100"),
        ({"max_error_fraction": 1.5}, "preprocess.max_error_fraction must be in [0, 1]"),
        ({"compression": "zip"}, "preprocess.compression must be one of 'none', 'gzip'"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ConfigError) as info:
        from_mapping(PreprocessConfig, values, "preprocess")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_read_params_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_params(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("preprocess: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_params(str(bad))
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        read_params(str(listy))
    section = tmp_path / "section.yaml"
    section.write_text("preprocess: 3\n")
    with pytest.raises(ConfigError, match="preprocess must be a mapping"):
        load_section(PreprocessConfig, str(section), "preprocess")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": 1, "a.c.d": "x", "e": 2}
