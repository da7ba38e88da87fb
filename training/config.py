"""Training parameters: the ``model``, ``train`` and ``evaluate`` sections of ``params.yaml``.

Each section is a frozen dataclass built and validated by :func:`pipeline.config.load_section`,
so an unknown key, a wrong type or an out-of-range value is a one-line :class:`ConfigError`
naming ``section.key`` before TensorFlow does any work::

    model_cfg = load_section(ModelConfig, "params.yaml", "model")
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pipeline.config import ConfigError, check, load_section

__all__ = [
    "AugmentConfig",
    "ConfigError",
    "EvaluateConfig",
    "ModelConfig",
    "TrainConfig",
    "load_section",
]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model``: the CNN-LSTM architecture (input shape and classes come from dataset.json).

    Attributes:
        backbone: ``cnn`` (the conv blocks below) or ``mobilenet_v3_small``
            (``keras.applications``, random init or ``backbone_weights``).
        backbone_weights: local path of weights for the backbone (``load_weights``);
            nothing is ever downloaded.
        freeze_backbone: do not train the backbone (useful with ``backbone_weights``).
        normalization: how the [0, 1] frames are scaled inside the model: ``unit`` (as is),
            ``symmetric`` ([-1, 1]) or ``imagenet`` (per-channel mean/std).
        temporal_input: what the CNN sees at each time step: ``frames`` (the frames as
            recorded), ``difference`` (each frame minus the previous one: T - 1 steps, the
            static background cancels out, what moves remains) or ``clip_mean`` (each frame
            minus the clip's mean frame).
        with_frames: with ``difference``/``clip_mean``, also give the CNN the frames themselves
            (stacked as extra channels), so it sees what moves as well as how.
        conv_filters: filters of each conv block (each block halves H and W).
        conv_kernel: kernel size of the convolutions.
        convs_per_block: convolutions per block before the pooling.
        pooling: ``max`` or ``avg`` pooling at the end of each block.
        batch_norm: batch normalisation after every convolution.
        frame_pooling: how a frame's last feature map becomes a vector: ``global_max`` (is a
            feature anywhere: finds a small moving object), ``global_avg``, or ``flatten``
            (keeps positions, many more parameters).
        frame_features: units of a Dense layer per frame after the pooling (0: none).
        rnn: ``lstm`` or ``gru``.
        rnn_units: units of each recurrent layer.
        rnn_layers: stacked recurrent layers.
        bidirectional: wrap each recurrent layer in ``Bidirectional``.
        dropout: dropout rate before the classifier (and after the frame features).
    """

    backbone: Literal["cnn", "mobilenet_v3_small"] = "cnn"
    backbone_weights: str | None = None
    freeze_backbone: bool = False
    normalization: Literal["unit", "symmetric", "imagenet"] = "unit"
    temporal_input: Literal["frames", "difference", "clip_mean"] = "difference"
    with_frames: bool = True
    conv_filters: tuple[int, ...] = (16, 32, 64)
    conv_kernel: int = 3
    convs_per_block: int = 1
    pooling: Literal["max", "avg"] = "max"
    batch_norm: bool = True
    frame_pooling: Literal["flatten", "global_avg", "global_max"] = "global_max"
    frame_features: int = 0
    rnn: Literal["lstm", "gru"] = "lstm"
    rnn_units: int = 64
    rnn_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_filters", tuple(self.conv_filters))
        if self.backbone == "cnn":
            check(len(self.conv_filters) > 0, "model.conv_filters", "must list at least one block")
        check(all(f > 0 for f in self.conv_filters), "model.conv_filters", f"must be positive, got {self.conv_filters}")
        for key in ("conv_kernel", "convs_per_block", "rnn_units", "rnn_layers"):
            check(getattr(self, key) > 0, f"model.{key}", f"must be a positive integer, got {getattr(self, key)}")
        check(
            self.frame_features >= 0, "model.frame_features", f"must be 0 (none) or positive, got {self.frame_features}"
        )
        check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.backbone_weights is not None:
            check(self.backbone != "cnn", "model.backbone_weights", "needs model.backbone: mobilenet_v3_small")
        if self.backbone == "mobilenet_v3_small":
            check(
                self.normalization == "symmetric",
                "model.normalization",
                "must be symmetric with backbone mobilenet_v3_small (it expects [-1, 1])",
            )
            check(
                self.temporal_input == "frames" or not self.with_frames,
                "model.with_frames",
                "must be false with backbone mobilenet_v3_small and a temporal_input (it takes 3 channels)",
            )

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["conv_filters"] = list(self.conv_filters)
        return data


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """``train.augment``: random changes applied identically to every frame of a clip.

    Nothing here may change a clip's class. Reversing time would, and so does
    ``horizontal_flip`` when classes name a horizontal direction ("moving left" becomes
    "moving right"): it is off by default; turn it on only for mirror-symmetric classes.

    Attributes:
        crop_min_fraction: a random crop keeping at least this fraction of each side,
            resized back to H x W (1.0: no crop).
        brightness: maximum brightness delta added to all frames (0: none).
        contrast: maximum relative contrast change, factor in [1 - c, 1 + c] (0: none).
        horizontal_flip: mirror half of the clips; swaps left/right motion.
    """

    crop_min_fraction: float = 0.75
    brightness: float = 0.1
    contrast: float = 0.1
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        check(
            0.0 < self.crop_min_fraction <= 1.0,
            "train.augment.crop_min_fraction",
            f"must be in (0, 1], got {self.crop_min_fraction}",
        )
        check(0.0 <= self.brightness <= 1.0, "train.augment.brightness", f"must be in [0, 1], got {self.brightness}")
        check(0.0 <= self.contrast < 1.0, "train.augment.contrast", f"must be in [0, 1), got {self.contrast}")

    @property
    def enabled(self) -> bool:
        return self.crop_min_fraction < 1.0 or self.brightness > 0 or self.contrast > 0 or self.horizontal_flip


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """``train``: optimisation, input pipeline and fault tolerance.

    Attributes:
        epochs: maximum number of epochs.
        batch_size: clips per batch (global batch size under MirroredStrategy).
        learning_rate: Adam's (initial) learning rate.
        lr_schedule: ``constant`` or ``cosine`` (cosine decay to 0 over all epochs).
        weight_decay: Adam's decoupled weight decay (0: none).
        seed: seeds Keras, TensorFlow, NumPy and the data order.
        shuffle_buffer: clips in the shuffle buffer.
        cache: keep decoded clips in memory after the first epoch.
        monitor: the validation metric for early stopping and the best checkpoint.
        early_stopping_patience: epochs without improvement before stopping (0: never stop).
        mixed_precision: ``mixed_float16`` on GPUs; ignored with a warning on CPU.
        augment: see :class:`AugmentConfig`.
    """

    epochs: int = 30
    batch_size: int = 16
    learning_rate: float = 2e-3
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    weight_decay: float = 0.0
    seed: int = 0
    shuffle_buffer: int = 1024
    cache: bool = True
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    early_stopping_patience: int = 8
    mixed_precision: bool = False
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size", "shuffle_buffer"):
            check(getattr(self, key) > 0, f"train.{key}", f"must be a positive integer, got {getattr(self, key)}")
        check(self.learning_rate > 0, "train.learning_rate", f"must be positive, got {self.learning_rate}")
        check(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        check(
            self.early_stopping_patience >= 0,
            "train.early_stopping_patience",
            f"must be 0 (off) or positive, got {self.early_stopping_patience}",
        )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """``evaluate``: the held-out evaluation.

    Attributes:
        split: which split to evaluate.
        batch_size: clips per prediction batch.
        top_k: k of the top-k accuracy (capped at the number of classes).
        shuffle_seed: seeds the time-shuffling of the temporal-order check.
    """

    split: Literal["train", "val", "test"] = "test"
    batch_size: int = 32
    top_k: int = 2
    shuffle_seed: int = 0

    def __post_init__(self) -> None:
        check(self.batch_size > 0, "evaluate.batch_size", f"must be a positive integer, got {self.batch_size}")
        check(self.top_k > 0, "evaluate.top_k", f"must be a positive integer, got {self.top_k}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
