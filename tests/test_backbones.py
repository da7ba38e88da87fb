"""Tests of training.backbones: every listed application builds and scales [0, 1] frames as Keras' own
preprocess_input does; ImageNet weights come from Keras' cache (offline), a weights file or a .keras image model."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from pipeline.records import DatasetSpec
from training import backbones
from training.model import build_model, split_model
from vidseq.errors import MissingFileError
from vidseq.params import APPLICATIONS, ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = DatasetSpec(sequence_length=3, height=32, width=32, channels=3, frame_encoding="jpeg", classes=("a", "b"))
FRAMES = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)


def pretrained(**changes) -> ModelConfig:
    values = {"backbone": "mobilenet_v2", "temporal_input": "frames", "freeze_backbone": True,
              "head": "temporal_stats", "standardize": False, **changes}  # fmt: skip
    return ModelConfig(**values)


def tiny_image_model(path: str | None = None) -> keras.Model:
    """A Keras Applications-style image model: RGB 0..255 in (its scaling inside), 6 features out."""
    frame = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(frame)
    x = keras.layers.Conv2D(6, 3, strides=2, activation="relu")(x)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(frame, keras.layers.GlobalAveragePooling2D()(x), name="tiny_image_model")
    if path:
        model.save(path)
    return model


# Keras' own input preprocessing of each application, applied to 0..255 pixels
PREPROCESS = {
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
    "mobilenet_v3_small": keras.applications.mobilenet_v3.preprocess_input,
    "mobilenet_v3_large": keras.applications.mobilenet_v3.preprocess_input,
    "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
    "efficientnet_v2_b0": keras.applications.efficientnet_v2.preprocess_input,
    "resnet50": keras.applications.resnet50.preprocess_input,
}


@pytest.mark.parametrize("name", APPLICATIONS)
def test_each_application_scales_unit_frames_as_its_preprocess_input_does(name):
    assert set(PREPROCESS) == set(APPLICATIONS)
    image_model = backbones.build_image_model((32, 32, 3), pretrained(backbone=name))
    backbone = backbones.backbone_of(image_model)
    assert not backbone.trainable
    expected = backbone.predict(PREPROCESS[name](FRAMES * 255.0), verbose=0)
    got = image_model.predict(FRAMES, verbose=0)
    assert got.shape == expected.shape and got.ndim == 2  # one average-pooled vector per frame
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_keras_image_model_file_gets_0_to_255_frames_and_is_the_whole_models_encoder(tmp_path):
    path = str(tmp_path / "image.keras")
    image = tiny_image_model(path)
    model = build_model(SPEC, pretrained(backbone="file", backbone_file=path))
    clips = np.random.default_rng(1).random((2, 3, 32, 32, 3), dtype=np.float32)
    per_frame = keras.Model(model.input, model.get_layer("per_frame").output).predict(clips, verbose=0)
    np.testing.assert_allclose(per_frame, image.predict((clips * 255).reshape(6, 32, 32, 3), verbose=0).reshape(2, 3, 6),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    saved = str(tmp_path / "video.keras")
    model.save(saved)
    np.testing.assert_allclose(keras.saving.load_model(saved).predict(clips, verbose=0), model.predict(clips, verbose=0),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(("temporal_input", "gain"), [("difference", 8.0), ("clip_mean", 1.0)])
def test_a_pretrained_backbone_sees_the_change_as_an_image_mid_grey_where_nothing_moves(tmp_path, temporal_input, gain):
    path = str(tmp_path / "image.keras")
    image = tiny_image_model(path)
    cfg = pretrained(backbone="file", backbone_file=path, temporal_input=temporal_input, with_frames=False, change_gain=gain)
    model = build_model(SPEC, cfg)
    clips = np.random.default_rng(1).random((2, 3, 32, 32, 3), dtype=np.float32)
    per_frame = keras.Model(model.input, model.get_layer("per_frame").output).predict(clips, verbose=0)
    if temporal_input == "difference":
        change = clips[:, 1:] - clips[:, :-1]  # T - 1 steps
    else:
        change = clips - clips.mean(axis=1, keepdims=True)
    steps = change.shape[1]
    as_image = np.clip(gain * change / 2 + 0.5, 0.0, 1.0)  # amplified, mid-grey where nothing changes, clipped
    assert (gain == 1.0) or ((as_image == 0.0).any() and (as_image == 1.0).any())
    expected = image.predict((as_image * 255).reshape(2 * steps, 32, 32, 3), verbose=0).reshape(2, steps, 6)
    np.testing.assert_allclose(per_frame, expected, rtol=1e-4, atol=1e-4)
    still = np.repeat(clips[:, :1], 3, axis=1)  # nothing moves: every step is a mid-grey image
    grey = image.predict(np.full((1, 32, 32, 3), 127.5, np.float32), verbose=0)
    got = keras.Model(model.input, model.get_layer("per_frame").output).predict(still, verbose=0)
    np.testing.assert_allclose(got, np.broadcast_to(grey, got.shape), rtol=1e-4, atol=1e-4)
    assert split_model(model) is not None  # the differences have no weights: still a frozen-feature model


def test_a_backbone_file_that_is_not_an_image_model_is_refused(tmp_path):
    path = str(tmp_path / "video.keras")
    build_model(SPEC, pretrained(backbone="file", backbone_file=_saved_image_model(tmp_path))).save(path)
    with pytest.raises(ValueError, match="must map .*images to .*vectors"):
        build_model(SPEC, pretrained(backbone="file", backbone_file=path))
    with pytest.raises(MissingFileError, match="model.backbone_file .*missing.keras not found"):
        build_model(SPEC, pretrained(backbone="file", backbone_file=str(tmp_path / "missing.keras")))


def _saved_image_model(tmp_path) -> str:
    path = str(tmp_path / "image.keras")
    tiny_image_model(path)
    return path


def test_weights_file_is_loaded(tmp_path):
    first = backbones.backbone_of(backbones.build_image_model((32, 32, 3), pretrained(backbone="mobilenet_v3_small")))
    path = str(tmp_path / "small.weights.h5")
    first.save_weights(path)
    cfg = pretrained(backbone="mobilenet_v3_small", backbone_weights="file", backbone_file=path)
    loaded = backbones.backbone_of(backbones.build_image_model((32, 32, 3), cfg))
    for a, b in zip(first.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(MissingFileError, match="model.backbone_file .* not found"):
        backbones.build_image_model((32, 32, 3), dataclasses.replace(cfg, backbone_file=str(tmp_path / "no.weights.h5")))


IMAGENET_OFFLINE = """
import os, sys, h5py, keras, numpy as np
from keras.src.legacy.saving import legacy_h5_format
from training import backbones
from vidseq.params import ModelConfig
# the file Keras Applications looks for in its cache, written from a randomly initialised network
reference = keras.applications.MobileNetV2(input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg")
name = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
os.makedirs(os.path.join(os.environ["KERAS_HOME"], "models"))
with h5py.File(os.path.join(os.environ["KERAS_HOME"], "models", name), "w") as handle:
    legacy_h5_format.save_weights_to_hdf5_group(handle, reference)
cfg = ModelConfig(backbone="mobilenet_v2", backbone_weights="imagenet", freeze_backbone=True, temporal_input="frames")
loaded = backbones.backbone_of(backbones.build_image_model((32, 32, 3), cfg))
same = all(np.array_equal(a, b) for a, b in zip(reference.get_weights(), loaded.get_weights()))
print("loaded from the cache" if same else "different weights")
"""


def test_imagenet_weights_come_from_keras_cache_without_a_download(tmp_path):
    env = {**os.environ, "KERAS_HOME": str(tmp_path / "keras"), "PYTHONPATH": ROOT,
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # a download would fail  # fmt: skip
    done = subprocess.run([sys.executable, "-c", IMAGENET_OFFLINE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "loaded from the cache"
    assert "Downloading" not in done.stdout + done.stderr


def test_unfreeze_top_opens_the_last_layers_but_not_batch_norm():
    image_model = backbones.build_image_model((32, 32, 3), pretrained())
    backbone = backbones.backbone_of(image_model)
    opened = backbones.unfreeze_top(backbone, 6)
    weighted = [layer for layer in backbone.layers if layer.weights]
    assert opened == sum(1 for layer in weighted[-6:] if not isinstance(layer, keras.layers.BatchNormalization)) > 0
    assert all(not layer.trainable for layer in weighted[:-6])
    assert all(not layer.trainable for layer in weighted if isinstance(layer, keras.layers.BatchNormalization))
    trainable = {id(w) for w in backbone.trainable_weights}
    assert trainable and trainable == {id(w) for layer in weighted[-6:] if layer.trainable for w in layer.trainable_weights}
