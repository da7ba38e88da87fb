"""The video classifier: ``TimeDistributed(frame encoder) -> head (LSTM/GRU or temporal statistics) -> Dense(softmax)``.

Input ``(batch, T, H, W, C)`` float frames in [0, 1]; output class probabilities. The frame
encoder is a CNN trained from scratch or a pretrained image model (:mod:`training.backbones`);
the heads are :mod:`training.heads`. Before the
CNN, built-in layers may turn the frames into what changes between them
(``model.temporal_input``): the frame differences cancel a static background, which lets a
small CNN trained on a few hundred clips find the motion instead of memorising scenes. The clip
shape and the class count come from ``dataset.json`` (:class:`DatasetSpec`), never from a
second place, so the model always matches the records it is built for.

The model file holds only the model, :func:`build_tiny_model` (a variant used for testing
only), :func:`summarize`, the shape through every layer (``python -m training.train --summary``),
and saving and loading: :func:`save_model` writes the same bytes for the same model.
"""

from __future__ import annotations

import json
import logging
import os
import weakref
import zipfile
from typing import Any

import keras
from keras import layers

from pipeline.records import ContractError, DatasetSpec

from training.backbones import build_image_model
from training.heads import HEAD, apply_head, build_head
from vidseq.params import ModelConfig

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TINY = ModelConfig(
    temporal_input="difference",
    with_frames=True,
    conv_filters=(4, 8),
    batch_norm=False,
    frame_pooling="flatten",
    frame_features=16,
    rnn_units=8,
    dropout=0.0,
)
"""The tiny variant's parameters: used for testing only."""


def build_model(spec: DatasetSpec, cfg: ModelConfig) -> keras.Model:
    """Builds the (uncompiled) video model for the clips described by ``spec``.

    With ``backbone: cnn`` the frames go through ``model.normalization`` and
    ``model.temporal_input``, a ``TimeDistributed`` CNN and the head's layers, all in one graph.
    With a pretrained backbone (:mod:`training.backbones`) the clip goes straight into
    ``per_frame`` (``TimeDistributed`` of the image model, which scales the frames itself) and
    then into the head as a sub-model named ``head`` (:mod:`training.heads`), so that the head
    can be trained alone on cached per-frame features (:func:`split_model`) while the saved
    model stays whole, raw frames in.

    Args:
        spec: the records' ``dataset.json``: input ``spec.clip_shape`` (T, H, W, C) and
            ``spec.num_classes`` outputs.
        cfg: the ``model`` section.

    Returns:
        A functional ``keras.Model`` mapping ``(batch, T, H, W, C)`` to ``(batch, classes)``.

    Raises:
        FileNotFoundError: if ``cfg.backbone_file`` is needed and does not exist.
    """
    inputs = keras.Input(spec.clip_shape, name="clip")
    if cfg.backbone != "cnn":
        if spec.channels != 3:
            raise ValueError(f"model.backbone {cfg.backbone} needs 3-channel (RGB) frames, the records have {spec.channels}")
        image_model = build_image_model(spec.clip_shape[1:], cfg)
        x = _pretrained_input(inputs, cfg, spec.sequence_length)
        x = layers.TimeDistributed(image_model, name="per_frame")(x)  # (batch, T or T - 1, features)
        head = build_head(x.shape[1], x.shape[2], cfg, spec.num_classes)
        head_name = cfg.rnn if cfg.head == "rnn" else "stats"
        return keras.Model(inputs, head(x), name=f"{cfg.backbone if cfg.backbone != 'file' else 'pretrained'}_{head_name}")
    x = _normalize(inputs, cfg.normalization, spec.channels)
    x = _temporal_input(x, cfg, spec.sequence_length)
    frame_encoder = _frame_encoder(x.shape[2:], cfg)
    x = layers.TimeDistributed(frame_encoder, name="per_frame")(x)  # (batch, T, features)
    outputs = apply_head(x, cfg, spec.num_classes)
    return keras.Model(inputs, outputs, name=f"cnn_{cfg.rnn if cfg.head == 'rnn' else 'stats'}")


def split_model(model: keras.Model) -> tuple[keras.Model, keras.Model] | None:
    """``(features, head)`` of a model with a pretrained backbone, else ``None``.

    ``features`` maps clips to per-frame features ``(batch, T, F)`` (the ``per_frame`` layer),
    ``head`` maps those to probabilities; ``head(features(clips))`` is ``model(clips)``, with
    the same weights (shared, not copied): training ``head`` trains ``model``.
    """
    try:
        head = model.get_layer(HEAD)
        per_frame = model.get_layer("per_frame")
    except ValueError:
        return None
    features = keras.Model(model.input, per_frame.output, name="features")
    if len(features.weights) != len(per_frame.weights):
        return None  # weights between the clip and the image model: not a fixed function of the clip
    return features, head


def traced_call(model: keras.Model) -> Any:
    """``clips -> outputs`` of ``model`` (inference), one ``tf.function`` traced once for any number of clips.

    A pretrained image model sits in ``TimeDistributed``, which Keras runs through
    ``vectorized_map``: tracing that for a MobileNetV2 takes about 20 s on 2 cores, and
    ``predict_on_batch`` traces again for each new batch size (the last, smaller batch of a
    split; a video with another number of clips). This function's batch axis is ``None``, so it
    is traced once per model and process (kept while the model lives). (Merging the batch and
    time axes by hand and calling the image model on all frames at once traces in 2 s but runs
    about 30 % slower on these CPUs: measured, 80-100 against 115-125 frames/s at 160x160.)
    """
    import tensorflow as tf

    run = _TRACED.get(model)
    if run is None:
        signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)]
        run = tf.function(lambda clips: model(clips, training=False), input_signature=signature)
        _TRACED[model] = run
    return run


_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def per_frame_features(feature_model: keras.Model) -> bool:
    """Whether a ``features`` part of :func:`split_model` encodes each frame alone (``temporal_input: frames``).

    Then the features of a clip whose frames are shuffled or reversed are its features shuffled
    or reversed; with frame differences before the image model they are not.
    """
    return not any(layer.name in _TEMPORAL_INPUT_LAYERS for layer in feature_model.layers)


def build_tiny_model(spec: DatasetSpec) -> keras.Model:
    """A very small CNN-LSTM (frame differences, two 4/8-filter blocks, LSTM 8): used for testing only."""
    return build_model(spec, TINY)


def _normalize(x: keras.KerasTensor, how: str, channels: int) -> keras.KerasTensor:
    if how == "symmetric":
        return layers.Rescaling(2.0, offset=-1.0, name="to_symmetric")(x)
    if how == "imagenet":
        if channels != 3:
            raise ValueError(f"model.normalization imagenet needs 3 channels, the records have {channels}")
        variance = [s * s for s in IMAGENET_STD]
        return layers.Normalization(mean=IMAGENET_MEAN, variance=variance, name="imagenet_norm")(x)
    return x


_TEMPORAL_INPUT_LAYERS = ("frame_difference", "minus_clip_mean")


def _pretrained_input(x: keras.KerasTensor, cfg: ModelConfig, t: int) -> keras.KerasTensor:
    """What a pretrained image model sees at each step: the frames, or their change as an image.

    A change in [-1, 1] is amplified by ``model.change_gain`` and shifted to mid-grey
    (gain x change / 2 + 0.5), then clipped to [0, 1]; the image model scales it like any frame
    (``model.with_frames`` is false here: an image model takes 3 channels).
    """
    if cfg.temporal_input == "frames":
        return x
    change = _temporal_input(x, cfg, t)
    image = layers.Rescaling(cfg.change_gain / 2, offset=0.5, name="change_as_image")(change)
    return layers.ReLU(max_value=1.0, name="clip_to_0_1")(image)


def _temporal_input(x: keras.KerasTensor, cfg: ModelConfig, t: int) -> keras.KerasTensor:
    """What the CNN sees at each time step (``model.temporal_input``, ``model.with_frames``)."""
    if cfg.temporal_input == "frames":
        return x
    if cfg.temporal_input == "difference":
        if t < 2:
            raise ValueError(f"model.temporal_input difference needs clips of 2 or more frames, the records have {t}")
        later = layers.Cropping3D(((1, 0), (0, 0), (0, 0)), name="frames_2_to_T")(x)
        earlier = layers.Cropping3D(((0, 1), (0, 0), (0, 0)), name="frames_1_to_T-1")(x)
        change = layers.Subtract(name="frame_difference")([later, earlier])
        frames = later
    else:  # clip_mean: the clip's mean frame, repeated T times, subtracted
        mean = layers.AveragePooling3D((t, 1, 1), name="clip_mean")(x)
        mean = layers.UpSampling3D((t, 1, 1), name="clip_mean_repeated")(mean)
        change = layers.Subtract(name="minus_clip_mean")([x, mean])
        frames = x
    if cfg.with_frames:
        return layers.Concatenate(axis=-1, name="frames_and_change")([frames, change])
    return change


def _frame_encoder(frame_shape: tuple[int, int, int], cfg: ModelConfig) -> keras.Model:
    """The per-frame CNN trained from scratch: ``(H, W, C')`` -> feature vector."""
    frame = keras.Input(frame_shape, name="frame")
    x = frame
    for block, filters in enumerate(cfg.conv_filters, start=1):
        for conv in range(1, cfg.convs_per_block + 1):
            name = f"block{block}_conv{conv}"
            x = layers.Conv2D(filters, cfg.conv_kernel, padding="same", use_bias=not cfg.batch_norm, name=name)(x)
            if cfg.batch_norm:
                x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.Activation("relu", name=f"{name}_relu")(x)
        pool = layers.MaxPooling2D if cfg.pooling == "max" else layers.AveragePooling2D
        x = pool(2, name=f"block{block}_pool")(x)
    if cfg.frame_pooling == "global_avg":
        x = layers.GlobalAveragePooling2D(name="global_avg")(x)
    elif cfg.frame_pooling == "global_max":
        x = layers.GlobalMaxPooling2D(name="global_max")(x)
    else:
        x = layers.Flatten(name="flatten")(x)
    if cfg.frame_features:
        x = layers.Dense(cfg.frame_features, activation="relu", name="frame_features")(x)
        if cfg.dropout > 0:
            x = layers.Dropout(cfg.dropout, name="frame_dropout")(x)
    return keras.Model(frame, x, name="frame_cnn")


def summarize(spec: DatasetSpec, model_cfg: ModelConfig) -> str:
    """A table of the shape flowing through each layer, per-frame layers included."""
    model = build_model(spec, model_cfg)
    lines = [
        f"{model.name}: clips (T, H, W, C) = {spec.clip_shape} -> {spec.num_classes} classes {list(spec.classes)}",
        f"{'layer':<42}{'output shape':<30}{'params':>10}",
    ]
    for layer in model.layers:
        lines.append(f"{layer.name + ' (' + type(layer).__name__ + ')':<42}{_shape(layer.output.shape):<30}"
                     f"{layer.count_params():>10,}")  # fmt: skip
        if isinstance(layer, keras.layers.TimeDistributed):
            steps = layer.output.shape[1]
            for inner in layer.layer.layers:  # applied to each time step
                shape = _shape((None, steps, *inner.output.shape[1:]))
                label = f"  {inner.name} ({type(inner).__name__})"
                lines.append(f"{label:<42}{shape:<30}{inner.count_params():>10,}")
    lines.append(f"total parameters: {model.count_params():,}")
    return "\n".join(lines)


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("batch" if d is None else str(d) for d in shape) + ")"


ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the zip format's earliest date: every entry of a saved model gets it


def save_model(model: keras.Model, path: str) -> None:
    """Saves ``model`` as a ``.keras`` file whose bytes depend only on the model.

    Keras stamps the save time into ``metadata.json`` (``date_saved``) and into the weights'
    zip entry, and numbers shared objects in ``config.json`` by their memory address
    (``shared_object_id``). The time is taken out, the ids become 1, 2, ... in order of first
    appearance (the same sharing) and every entry is dated :data:`ZIP_TIME` (in Keras' order),
    so retraining the same model on the same data gives the same file and the same DVC hash.
    """
    model.save(path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    scratch = f"{path}.tmp"
    with zipfile.ZipFile(scratch, "w") as archive:
        for info, data in entries:
            if info.filename == "metadata.json":
                metadata = json.loads(data)
                metadata.pop("date_saved", None)
                data = json.dumps(metadata, sort_keys=True).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=ZIP_TIME)
            entry.compress_type, entry.external_attr = info.compress_type, 0o644 << 16
            archive.writestr(entry, data)
    os.replace(scratch, path)


def _renumber_shared_objects(config: Any, ids: dict[Any, int]) -> Any:
    """``config`` with each ``shared_object_id`` replaced by its order of first appearance."""
    if isinstance(config, dict):
        return {
            key: ids.setdefault(value, len(ids) + 1) if key == "shared_object_id" else _renumber_shared_objects(value, ids)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [_renumber_shared_objects(value, ids) for value in config]
    return config


def load_keras_model(path: str) -> Any:
    """``keras.saving.load_model`` with one clear error for a damaged file.

    Raises:
        ContractError: naming the file and the fix, for a truncated or non-Keras file.
    """
    if not zipfile.is_zipfile(path):
        raise ContractError(
            f"{path} is damaged (truncated?) or not a Keras .keras file: restore it or re-train "
            "(python -m training.train)"
        )
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises ValueError, KeyError, OSError, ... for a damaged archive
        logger.debug("loading %s", path, exc_info=True)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ContractError(
            f"{path} cannot be loaded as a Keras model ({detail}): restore it or re-train (python -m training.train)"
        ) from exc
