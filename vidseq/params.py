"""The params schema: every section of ``params.yaml`` as a validated frozen dataclass, read once.

Each stage loads the whole file once, before any work::

    params = Params.load("params.yaml")      # ConfigError naming section.key on any mistake
    params.preprocess.sequence_length, params.train.epochs, params.register.champion_uri

The defaults here are the shipped ``params.yaml`` (a test checks that the two cannot drift).
The ``preprocess`` section is also stored in every ``dataset.json`` (``sampling``) and rebuilt
from there with :func:`vidseq.validation.from_mapping`, so predict samples videos as the job did.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Literal

from vidseq.validation import ConfigError, check, from_mapping, read_yaml

__all__ = [
    "APPLICATIONS",
    "CHALLENGER",
    "CHAMPION",
    "DEFAULT_PARAMS",
    "AugmentConfig",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "MlflowConfig",
    "ModelConfig",
    "Params",
    "PreprocessConfig",
    "RegisterConfig",
    "STATISTICS",
    "TrainConfig",
]

DEFAULT_PARAMS = "params.yaml"

CHAMPION = "champion"
"""Alias of the version that serves: moved only by a passing promotion gate."""
CHALLENGER = "challenger"
"""Alias of the most recently registered version, promoted or not."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

APPLICATIONS = (
    "mobilenet_v2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_b0",
    "resnet50",
)
"""The Keras Applications ``model.backbone`` may name (``training.backbones`` builds them; each is tested)."""

STATISTICS = ("mean", "std", "change")
"""What the ``temporal_stats`` head may compute per feature over time (``model.statistics``)."""


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: where the raw videos and the records live, the data's name, and the demo dataset's size.

    ``name`` names the data in MLflow (dataset inputs ``<name>-train``, run names
    ``<commit>-<name>-<n>``); ``None``: the folder of ``raw_dir`` (a manifest's own folder).
    """

    raw_dir: str = "data/demo"
    records_dir: str = "data/records"
    name: str | None = None
    synth_videos_per_class: int = 45
    synth_seed: int = 0

    def __post_init__(self) -> None:
        check(self.synth_videos_per_class > 0, "data.synth_videos_per_class", "must be positive")
        if self.name is not None:
            check(
                bool(_NAME.match(self.name)),
                "data.name",
                f"must be letters, digits, '.', '_' or '-' (it names datasets and runs), got {self.name!r}",
            )

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """``preprocess``: how videos become fixed-length clips (read by the Beam job and predict)."""

    sequence_length: int = 8
    height: int = 48
    width: int = 48
    channels: Literal[3] = 3
    fps: float = 8.0
    sampling: Literal["uniform", "sliding"] = "uniform"
    clips_per_video: int = 3
    clip_stride: int = 4
    short_video: Literal["pad", "loop", "skip"] = "pad"
    resize: Literal["crop", "letterbox"] = "crop"
    frame_encoding: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 90
    splits: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"train": 0.6, "val": 0.15, "test": 0.25}
    )
    split_salt: str = "vidseq-1"
    shard_size_mb: float = 64.0
    compression: Literal["none", "gzip"] = "none"
    max_error_fraction: float = 0.1
    video_timeout_s: float = 300.0
    decode_threads: int = 0
    decode: Literal["auto", "sequential", "seek"] = "auto"

    def __post_init__(self) -> None:
        for key in ("sequence_length", "height", "width", "clips_per_video", "clip_stride"):
            check(getattr(self, key) > 0, f"preprocess.{key}", f"must be a positive integer, got {getattr(self, key)}")
        check(self.fps > 0, "preprocess.fps", f"must be positive, got {self.fps}")
        check(1 <= self.jpeg_quality <= 100, "preprocess.jpeg_quality", f"must be in 1..100, got {self.jpeg_quality}")
        check(self.shard_size_mb > 0, "preprocess.shard_size_mb", f"must be positive, got {self.shard_size_mb}")
        check(
            0.0 <= self.max_error_fraction <= 1.0,
            "preprocess.max_error_fraction",
            f"must be in [0, 1], got {self.max_error_fraction}",
        )
        check(self.video_timeout_s > 0, "preprocess.video_timeout_s", f"must be positive, got {self.video_timeout_s}")
        check(self.decode_threads >= 0, "preprocess.decode_threads", "must be 0 (auto) or a positive count")
        unknown = sorted(set(self.splits) - {"train", "val", "test"})
        check(not unknown, f"preprocess.splits.{unknown[0] if unknown else ''}", "is not a split: use train, val, test")
        for name, fraction in self.splits.items():
            check(0.0 <= fraction <= 1.0, f"preprocess.splits.{name}", f"must be in [0, 1], got {fraction}")
        total = sum(self.splits.values())
        check(abs(total - 1.0) < 1e-6, "preprocess.splits", f"fractions must add up to 1, got {total:g}")

    def as_dict(self) -> dict[str, Any]:
        """Plain-dict form, for ``dataset.json``'s ``sampling`` and for MLflow."""
        data = dataclasses.asdict(self)
        data["splits"] = dict(self.splits)
        return data


@dataclasses.dataclass(frozen=True)
class MlflowConfig:
    """``mlflow``: where the stages log.

    The tracking store itself is ``MLFLOW_TRACKING_URI`` or MLflow's default
    ``sqlite:///mlflow.db`` (relative to the working directory: the repository root under
    ``dvc repro`` and ``make``); it is not a parameter, so moving the store never re-runs a stage.

    Attributes:
        experiment_name: the MLflow experiment every run of the pipeline goes to.
    """

    experiment_name: str = "vidseq"

    def __post_init__(self) -> None:
        check(bool(self.experiment_name.strip()), "mlflow.experiment_name", "must not be empty")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class RegisterConfig:
    """``register``: the registered model and its promotion gate.

    Every registration creates a new version with alias ``challenger``; alias ``champion``
    moves to it only if its ``metric`` is at least ``min_accuracy`` and not worse than the
    current champion's.

    Attributes:
        model_name: name in the MLflow Model Registry (``models:/<name>@champion``).
        min_accuracy: the lowest ``metric`` a champion may have, in [0, 1].
        metric: the key of ``metrics.json`` the gate compares (video-level test accuracy).
    """

    model_name: str = "vidseq-cnn-lstm"
    min_accuracy: float = 0.8
    metric: str = "video_accuracy"

    def __post_init__(self) -> None:
        check(
            bool(_NAME.match(self.model_name)),
            "register.model_name",
            f"must be letters, digits, '.', '_' or '-' (it goes into models:/<name>@alias), got {self.model_name!r}",
        )
        check(0.0 <= self.min_accuracy <= 1.0, "register.min_accuracy", f"must be in [0, 1], got {self.min_accuracy}")
        check(bool(self.metric.strip()), "register.metric", "must name a key of metrics.json")

    @property
    def champion_uri(self) -> str:
        """``models:/<model_name>@champion``: what predict and serve use by default."""
        return f"models:/{self.model_name}@{CHAMPION}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """``model``: the video model, frames -> per-frame encoder -> head (input shape and classes come from dataset.json).

    Attributes:
        backbone: the per-frame encoder: ``cnn`` (the conv blocks below, trained from
            scratch), a Keras Applications name (:data:`APPLICATIONS`), or ``file``: the Keras
            image model saved at ``backbone_file`` (``.keras``: RGB 0..255 in, a feature vector
            out, its preprocessing inside). A pretrained backbone scales the [0, 1] frames
            itself (:mod:`training.backbones`) and is average-pooled to one vector per frame.
        backbone_weights: an application's weights: ``null`` (random init), ``imagenet``
            (Keras' download into its cache, ``$KERAS_HOME/models`` or ``~/.keras/models``; a
            file already there is used, so a machine without a network needs it placed there)
            or ``file`` (the weights file ``backbone_file``).
        backbone_file: the ``.keras`` image model (``backbone: file``) or the weights file
            (``backbone_weights: file``); a DVC dependency of ``train`` either way (default: the
            ``backbones`` folder, which always exists).
        freeze_backbone: do not train the backbone. With a pretrained backbone this is the
            frozen-feature path: each clip's per-frame features are computed once and cached,
            and the head trains on them (``train.feature_cache``).
        normalization: how the [0, 1] frames are scaled for backbone ``cnn``: ``unit`` (as
            is), ``symmetric`` ([-1, 1]) or ``imagenet`` (per-channel mean/std); a pretrained
            backbone needs ``unit`` (it scales the frames as it was trained to).
        temporal_input: what the CNN sees at each time step: ``frames`` (the frames as
            recorded), ``difference`` (each frame minus the previous one: T - 1 steps, the
            static background cancels out, what moves remains) or ``clip_mean`` (each frame
            minus the clip's mean frame). A pretrained backbone sees the change as an image
            (``change_gain`` x change / 2 + 0.5, clipped to [0, 1]: no change is mid-grey),
            which on real footage carries the motion that frames alone do not.
        change_gain: a pretrained backbone seeing ``difference``/``clip_mean``: how much the
            change is amplified before it becomes an image (most frame-to-frame changes are a
            few grey levels, too faint for an image model; the clipping keeps large ones
            white or black). Not used by ``cnn``, which learns its own scale.
        with_frames: with ``difference``/``clip_mean``, also give the CNN the frames themselves
            (stacked as extra channels), so it sees what moves as well as how (``cnn`` only: a
            pretrained backbone takes 3 channels, so it needs ``false`` there).
        conv_filters: filters of each conv block (each block halves H and W).
        conv_kernel: kernel size of the convolutions.
        convs_per_block: convolutions per block before the pooling.
        pooling: ``max`` or ``avg`` pooling at the end of each block.
        batch_norm: batch normalisation after every convolution.
        frame_pooling: how a frame's last feature map becomes a vector (``cnn``): ``global_max``
            (is a feature anywhere: finds a small moving object), ``global_avg``, or ``flatten``
            (keeps positions, many more parameters).
        frame_features: units of a Dense layer per frame after the pooling (0: none; ``cnn`` only).
        head: ``rnn`` (the recurrent layers below) or ``temporal_stats`` (``statistics`` of each
            feature over time -> dropout -> Dense: a logistic regression; :mod:`training.heads`).
        statistics: ``temporal_stats``: any of ``mean``, ``std``, ``change`` (mean absolute
            frame-to-frame difference).
        standardize: ``temporal_stats``: scale each statistic to mean 0, variance 1 over the
            training clips (a ``Normalization`` layer inside the model, adapted before training).
        rnn: ``lstm`` or ``gru``.
        rnn_units: units of each recurrent layer.
        rnn_layers: stacked recurrent layers.
        bidirectional: wrap each recurrent layer in ``Bidirectional``.
        dropout: dropout rate before the classifier (and after the frame features).
        l2: ``temporal_stats``: L2 penalty on the classifier's weights (0: none).
    """

    backbone: str = "cnn"
    backbone_weights: Literal["imagenet", "file"] | None = None
    backbone_file: str = "backbones"
    freeze_backbone: bool = False
    normalization: Literal["unit", "symmetric", "imagenet"] = "unit"
    temporal_input: Literal["frames", "difference", "clip_mean"] = "difference"
    with_frames: bool = True
    change_gain: float = 5.0
    conv_filters: tuple[int, ...] = (16, 32, 64)
    conv_kernel: int = 3
    convs_per_block: int = 1
    pooling: Literal["max", "avg"] = "max"
    batch_norm: bool = True
    frame_pooling: Literal["flatten", "global_avg", "global_max"] = "global_max"
    frame_features: int = 0
    head: Literal["rnn", "temporal_stats"] = "rnn"
    statistics: tuple[str, ...] = ("std", "change")
    standardize: bool = True
    rnn: Literal["lstm", "gru"] = "lstm"
    rnn_units: int = 64
    rnn_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.5
    l2: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "conv_filters", tuple(self.conv_filters))
        object.__setattr__(self, "statistics", tuple(self.statistics))
        choices = ("cnn", *APPLICATIONS, "file")
        check(self.backbone in choices, "model.backbone", f"must be one of {', '.join(choices)}; got {self.backbone!r}")
        if self.backbone == "cnn":
            check(len(self.conv_filters) > 0, "model.conv_filters", "must list at least one block")
        check(all(f > 0 for f in self.conv_filters), "model.conv_filters", f"must be positive, got {self.conv_filters}")
        for key in ("conv_kernel", "convs_per_block", "rnn_units", "rnn_layers"):
            check(getattr(self, key) > 0, f"model.{key}", f"must be a positive integer, got {getattr(self, key)}")
        check(
            self.frame_features >= 0, "model.frame_features", f"must be 0 (none) or positive, got {self.frame_features}"
        )
        check(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {self.dropout}")
        check(self.l2 >= 0.0, "model.l2", f"must be >= 0, got {self.l2}")
        check(self.change_gain > 0.0, "model.change_gain", f"must be > 0, got {self.change_gain}")
        unknown = sorted(set(self.statistics) - set(STATISTICS))
        check(
            bool(self.statistics) and not unknown,
            "model.statistics",
            f"must list some of {', '.join(STATISTICS)}, got {list(self.statistics)}",
        )
        if self.backbone_weights is not None:
            check(
                self.backbone in APPLICATIONS,
                "model.backbone_weights",
                f"is for a Keras Applications backbone ({', '.join(APPLICATIONS)}); "
                + ("a backbone file holds its own weights: set it to null" if self.backbone == "file" else
                   "backbone cnn trains from scratch: set it to null"),
            )  # fmt: skip
        if self.backbone == "file":
            check(
                self.backbone_file.endswith(".keras"),
                "model.backbone_file",
                f"must be a .keras image model file with model.backbone file, got {self.backbone_file!r}",
            )
        if self.backbone_weights == "file":
            check(
                self.backbone_file.endswith(".h5"),
                "model.backbone_file",
                f"must be a weights file (.weights.h5 or .h5) with model.backbone_weights file, got {self.backbone_file!r}",
            )
        if self.backbone == "cnn":
            check(not self.freeze_backbone, "model.freeze_backbone", "needs a pretrained model.backbone (cnn trains from scratch)")
        else:
            pretrained = f"with backbone {self.backbone}"
            check(self.normalization == "unit", "model.normalization",
                  f"must be unit {pretrained}: it scales the [0, 1] frames as it was trained to")  # fmt: skip
            check(self.temporal_input == "frames" or not self.with_frames, "model.with_frames",
                  f"must be false {pretrained} and temporal_input {self.temporal_input}: an image model takes "
                  "3 channels, the change alone (or set temporal_input: frames)")  # fmt: skip
            check(self.frame_features == 0, "model.frame_features",
                  f"must be 0 {pretrained}: its features go to the head as they are")  # fmt: skip

    @property
    def pretrained(self) -> bool:
        """Whether the backbone is a pretrained image model (anything but ``cnn`` with random weights)."""
        return self.backbone == "file" or (self.backbone in APPLICATIONS and self.backbone_weights is not None)

    @property
    def frozen_features(self) -> bool:
        """Whether the per-frame features are fixed: a frozen backbone other than ``cnn`` (cacheable)."""
        return self.backbone != "cnn" and self.freeze_backbone

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["conv_filters"] = list(self.conv_filters)
        data["statistics"] = list(self.statistics)
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
        cache: after the first epoch, keep a split's decoded clips in memory when they fit
            ``training.data.DECODED_CACHE_BUDGET`` (1 GiB), else the encoded records of remote
            shards in a file cache under the output folder (:func:`training.data.cache_plan`).
        monitor: the validation metric for early stopping and the best checkpoint.
        early_stopping_patience: epochs without improvement before stopping (0: never stop).
        mixed_precision: ``mixed_float16`` on GPUs; ignored with a warning on CPU.
        augment: see :class:`AugmentConfig`. Not applied on the frozen-feature path (the
            features are computed once, from the clips as recorded).
        feature_cache: the folder of the frozen-feature path's cache (``model.freeze_backbone``
            with a pretrained backbone): each split's per-frame features, one ``.npz`` per key
            (records' contents, backbone and weights); relative paths are from the working
            directory (the repository root under ``dvc repro``).
        fine_tune_layers: after training the head on the frozen backbone, unfreeze the
            backbone's top this many weighted layers (BatchNormalization stays frozen) ...
        fine_tune_epochs: ... and train the whole model this many more epochs on the frames
            (0: no fine-tuning) ...
        fine_tune_learning_rate: ... at this (lower, constant) learning rate.
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
    feature_cache: str = ".cache/features"
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_learning_rate: float = 1e-5

    def __post_init__(self) -> None:
        check(bool(self.feature_cache.strip()), "train.feature_cache", "must name a folder")
        check(self.fine_tune_layers >= 0, "train.fine_tune_layers", f"must be >= 0, got {self.fine_tune_layers}")
        check(self.fine_tune_epochs >= 0, "train.fine_tune_epochs", f"must be >= 0, got {self.fine_tune_epochs}")
        check(
            self.fine_tune_learning_rate > 0,
            "train.fine_tune_learning_rate",
            f"must be positive, got {self.fine_tune_learning_rate}",
        )
        check(
            (self.fine_tune_epochs > 0) == (self.fine_tune_layers > 0),
            "train.fine_tune_epochs",
            "and train.fine_tune_layers go together: both positive to fine-tune, both 0 not to",
        )
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


@dataclasses.dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``: one attribute per section; a missing section takes its defaults."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    preprocess: PreprocessConfig = dataclasses.field(default_factory=PreprocessConfig)
    mlflow: MlflowConfig = dataclasses.field(default_factory=MlflowConfig)
    register: RegisterConfig = dataclasses.field(default_factory=RegisterConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = dataclasses.field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        if self.train.fine_tune_epochs:
            check(
                self.model.freeze_backbone and self.model.pretrained,
                "train.fine_tune_epochs",
                "fine-tunes a frozen pretrained backbone: set model.freeze_backbone true with a pretrained "
                "model.backbone (file, or an application with backbone_weights), or set it to 0",
            )

    @classmethod
    def load(cls, path: str = DEFAULT_PARAMS) -> Params:
        """Reads and validates a params file.

        Raises:
            ConfigError: the file is missing or not YAML, or a section or key is unknown,
                mistyped or out of range (the message names ``section.key``).
        """
        return cls.from_dict(read_yaml(path))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Params:
        """Builds and validates params from a mapping of sections."""
        return from_mapping(cls, values, "")

    def as_dict(self) -> dict[str, Any]:
        """Every section as plain data (tuples as lists), e.g. for logging to MLflow."""
        return {f.name: getattr(self, f.name).as_dict() for f in dataclasses.fields(self)}
