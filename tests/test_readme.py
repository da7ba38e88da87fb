"""Tests that the README's settings for real footage are valid parameters that build the model they describe."""

from __future__ import annotations

import os
import re

import yaml
from test_backbones import tiny_image_model

from pipeline.records import DatasetSpec
from training.model import build_model, per_frame_features, split_model
from vidseq.params import Params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(heading: str) -> dict:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    after = text[text.index(heading) :]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", after, re.S).group(1))


def test_the_real_footage_settings_are_valid_and_build_a_frozen_difference_model(tmp_path):
    settings = readme_block("**Settings to start from on real footage.**")
    with open(os.path.join(ROOT, "params.yaml"), encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    backbone = str(tmp_path / "mobilenet_v2_imagenet.keras")
    tiny_image_model(backbone)
    settings["model"]["backbone_file"] = backbone  # the README's /path/to/... is the user's
    for section, changes in settings.items():
        values[section].update(changes)
    params = Params.from_dict(values)
    assert params.model.frozen_features and params.model.temporal_input == "difference"
    pre = params.preprocess
    spec = DatasetSpec(sequence_length=pre.sequence_length, height=pre.height, width=pre.width, channels=3,
                       frame_encoding="jpeg", classes=("fight", "noFight"))  # fmt: skip
    model = build_model(spec, params.model)
    feature_model, head = split_model(model)
    assert not per_frame_features(feature_model)
    assert feature_model.output_shape == (None, pre.sequence_length - 1, 6)  # T - 1 differences, 6 features each
    assert head.output_shape == (None, 2)
