"""Pretrained image models for the per-frame encoder: Keras Applications, or a saved ``.keras`` image model.

Every image model here takes one frame as float RGB in [0, 1] (what :mod:`training.data` yields)
and gives one feature vector. The scaling each backbone expects is built in, as layers, so a
saved video model is whole (raw frames in) and nobody sets ``model.normalization`` for it:

* a ``.keras`` image model (``model.backbone: file``) follows Keras Applications' convention,
  RGB 0..255 in, its own preprocessing inside: the frames are multiplied by 255;
* ``mobilenet_v3_*``, ``efficientnet_b0`` and ``efficientnet_v2_b0`` carry their preprocessing
  (``include_preprocessing``): frames x 255;
* ``mobilenet_v2`` wants [-1, 1] (its ``preprocess_input``): frames x 2 - 1;
* ``resnet50`` wants Caffe's BGR minus the ImageNet mean (its ``preprocess_input``): one fixed
  1x1 convolution does x 255, RGB -> BGR and the mean.

Weights (``model.backbone_weights``): ``null`` (random), ``imagenet`` (Keras' own download into
its cache, ``$KERAS_HOME/models`` or ``~/.keras/models``; a file already there is used as is),
or ``file`` (``load_weights`` from ``model.backbone_file``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import keras
import numpy as np
from keras import layers

from vidseq.errors import MissingFileError
from vidseq.params import APPLICATIONS, ModelConfig

logger = logging.getLogger(__name__)

CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
"""ImageNet's mean pixel, B, G, R (Keras' ``imagenet_utils.preprocess_input``, mode ``caffe``)."""

IMAGE_MODEL = "image_model"
"""Name of the per-frame model wrapping a pretrained backbone (inside ``per_frame``)."""


def _application(name: str) -> tuple[Any, str]:
    """The Keras Applications constructor for ``name`` and how it wants its 0..255 input."""
    apps = keras.applications
    table = {
        "mobilenet_v2": (apps.MobileNetV2, "symmetric"),
        "mobilenet_v3_small": (apps.MobileNetV3Small, "inside"),
        "mobilenet_v3_large": (apps.MobileNetV3Large, "inside"),
        "efficientnet_b0": (apps.EfficientNetB0, "inside"),
        "efficientnet_v2_b0": (apps.EfficientNetV2B0, "inside"),
        "resnet50": (apps.ResNet50, "caffe"),
    }
    assert set(table) == set(APPLICATIONS), "vidseq.params.APPLICATIONS and this table must list the same names"
    return table[name]


def build_image_model(frame_shape: tuple[int, int, int], cfg: ModelConfig) -> keras.Model:
    """The per-frame image model of a pretrained backbone: ``(H, W, 3)`` in [0, 1] -> ``(features,)``.

    Raises:
        MissingFileError: if ``model.backbone_file`` is needed and does not exist.
        ValueError: if a ``.keras`` image model does not map one frame to one feature vector.
    """
    frame = keras.Input(frame_shape, name="frame")
    if cfg.backbone == "file":
        backbone = load_image_model(cfg.backbone_file, frame_shape)
        x = layers.Rescaling(255.0, name="to_0_255")(frame)
    else:
        constructor, scaling = _application(cfg.backbone)
        backbone = _build_application(constructor, frame_shape, cfg)
        if scaling == "symmetric":
            x = layers.Rescaling(2.0, offset=-1.0, name="to_symmetric")(frame)
        elif scaling == "caffe":
            x = _caffe(frame)
        else:
            x = layers.Rescaling(255.0, name="to_0_255")(frame)
    backbone.trainable = not cfg.freeze_backbone
    # a pretrained backbone's BatchNormalization stays in inference mode, frozen or fine-tuned (Keras'
    # transfer-learning guide): its statistics are ImageNet's, not those of a batch of a few clips
    x = backbone(x, training=False) if cfg.pretrained else backbone(x)
    return keras.Model(frame, x, name=IMAGE_MODEL)


def _build_application(constructor: Any, frame_shape: tuple[int, int, int], cfg: ModelConfig) -> keras.Model:
    kwargs: dict[str, Any] = {"input_shape": tuple(frame_shape), "include_top": False, "pooling": "avg"}
    if cfg.backbone in ("mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_v2_b0"):
        kwargs["include_preprocessing"] = True
    weights = cfg.backbone_weights
    if weights == "file":
        if not os.path.exists(cfg.backbone_file):
            raise MissingFileError(
                f"model.backbone_file {cfg.backbone_file} not found: give the path of a {cfg.backbone} no-top "
                "weights file (.weights.h5, or the .h5 that Keras Applications downloads)"
            )
        backbone = constructor(weights=None, **kwargs)
        backbone.load_weights(cfg.backbone_file)
        return backbone
    if weights == "imagenet":
        logger.info(
            "model.backbone_weights imagenet: Keras loads %s's weights from its cache (%s), downloading them "
            "there first if they are missing (needs a network)", cfg.backbone, keras_cache_dir(),
        )  # fmt: skip
    return constructor(weights=weights, **kwargs)


def keras_cache_dir() -> str:
    """Where Keras keeps downloaded weights: ``$KERAS_HOME/models``, else ``~/.keras/models``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "models")


def _caffe(frame: keras.KerasTensor) -> keras.KerasTensor:
    """[0, 1] RGB -> 0..255 BGR minus the ImageNet mean, as one fixed (untrainable) 1x1 convolution."""
    conv = layers.Conv2D(3, 1, name="to_caffe_bgr", trainable=False)
    conv.build((None, None, None, 3))
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for rgb in range(3):
        kernel[0, 0, rgb, 2 - rgb] = 255.0
    conv.set_weights([kernel, -np.asarray(CAFFE_BGR_MEAN, np.float32)])
    return conv(frame)


def load_image_model(path: str, frame_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """A saved Keras image model (``.keras``: RGB 0..255 in, a feature vector out).

    Raises:
        MissingFileError: if the file does not exist.
        ValueError: if it does not take 3-channel images or does not give a feature vector.
    """
    if not os.path.exists(path):
        raise MissingFileError(
            f"model.backbone_file {path} not found: give the path of a Keras image model (.keras: RGB 0..255 "
            "in, a feature vector out)"
        )
    from training.model import load_keras_model

    model = load_keras_model(path)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[-1] != 3 or len(model.output_shape) != 2:
        raise ValueError(
            f"model.backbone_file {path} maps {shape} to {tuple(model.output_shape)}: a backbone must map "
            "(batch, H, W, 3) images to (batch, features) vectors"
        )
    if frame_shape is not None and None not in shape[1:3] and tuple(shape[1:3]) != tuple(frame_shape[:2]):
        raise ValueError(
            f"model.backbone_file {path} takes {shape[1]}x{shape[2]} images but the records' frames are "
            f"{frame_shape[0]}x{frame_shape[1]}: re-run preprocessing at that size or use another backbone"
        )
    return model


def backbone_of(image_model: keras.Model) -> keras.Model:
    """The pretrained backbone inside an image model of :func:`build_image_model` (its one nested model)."""
    nested = [layer for layer in image_model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ValueError(f"{image_model.name} holds {len(nested)} nested models, not one backbone")
    return nested[0]


def unfreeze_top(backbone: keras.Model, count: int) -> int:
    """Makes the top ``count`` weighted layers of ``backbone`` trainable, BatchNormalization excepted.

    The backbone was called with ``training=False``, so its BatchNormalization layers keep
    ImageNet's statistics and stay frozen (Keras' transfer-learning guide). Returns how many
    layers became trainable.
    """
    backbone.trainable = True
    weighted = [layer for layer in _flat_layers(backbone) if layer.weights]
    top = weighted[-count:] if count else []
    for layer in weighted:
        layer.trainable = layer in top and not isinstance(layer, layers.BatchNormalization)
    return sum(1 for layer in top if layer.trainable)


def _flat_layers(model: keras.Model) -> list[Any]:
    out = []
    for layer in model.layers:
        out.extend(_flat_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out
