"""Parameters: ``params.yaml`` sections read into validated frozen dataclasses.

Every stage reads its sections through :func:`load_section`, so an unknown key, a wrong type
or an out-of-range value is one line naming ``section.key`` before any work starts. The
dataclasses of the ``data`` and ``preprocess`` sections live here; training's sections
(``model``, ``train``, ``evaluate``, ``register``, ``mlflow``) live in ``training.config``
and use the same builder.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")

DEFAULT_PARAMS = "params.yaml"


class ConfigError(ValueError):
    """A parameter is unknown, mistyped or out of range; the message names it."""


# --------------------------------------------------------------------------- generic builder


def read_params(path: str = DEFAULT_PARAMS) -> dict[str, Any]:
    """Reads a params YAML file into a dict of sections.

    Raises:
        ConfigError: if the file is missing or is not a mapping of sections.
    """
    if not os.path.exists(path):
        raise ConfigError(f"params file {path} not found: pass --params PATH or run from the project root")
    with open(path, encoding="utf-8") as handle:
        try:
            data = yaml.safe_load(handle) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must be a mapping of sections, got {type(data).__name__}")
    return data


def load_section(cls: type[T], params: Mapping[str, Any] | str, section: str) -> T:
    """Builds the dataclass ``cls`` from ``params[section]`` (a dict or a YAML path).

    A missing section gives the dataclass defaults.
    """
    if isinstance(params, str):
        params = read_params(params)
    values = params.get(section) or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{section} must be a mapping of keys, got {type(values).__name__}")
    return from_mapping(cls, values, section)


def from_mapping(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    """Builds dataclass ``cls`` from ``values``, checking keys and types against its fields.

    Raises:
        ConfigError: naming ``prefix.key`` for an unknown key, a wrong type or a value
            that the dataclass's own ``__post_init__`` rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(hints[name], value, f"{prefix}.{name}") for name, value in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key} must not be null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_mapping(hint, value, key)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, key): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported parameter type {hint!r}")  # a bug in a dataclass, not in params


def check(condition: bool, key: str, message: str) -> None:
    """Raises ``ConfigError('{key} {message}')`` unless ``condition``; for ``__post_init__``."""
    if not condition:
        raise ConfigError(f"{key} {message}")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: for logging parameters to MLflow."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------- sections


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """``data``: where the raw videos and the records live, and the demo dataset's size."""

    raw_dir: str = "data/raw"
    records_dir: str = "data/records"
    synth_videos_per_class: int = 45
    synth_seed: int = 0

    def __post_init__(self) -> None:
        check(self.synth_videos_per_class > 0, "data.synth_videos_per_class", "must be positive")


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
    split_salt: str = "vidseq"
    shard_size_mb: float = 64.0
    compression: Literal["none", "gzip"] = "none"
    max_error_fraction: float = 0.1
    video_timeout_s: float = 300.0
    decode_threads: int = 0

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
