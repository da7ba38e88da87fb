"""Frozen dataclasses built from plain mappings, checked key by key: the engine under the params schema.

:func:`from_mapping` builds a dataclass from a mapping (a ``params.yaml`` section, or the
``sampling`` of a ``dataset.json``), coercing every value to its field's type hint; an unknown
key, a wrong type or a value that the dataclass's ``__post_init__`` rejects is one
:class:`ConfigError` line naming ``section.key``. The schema itself is :mod:`vidseq.params`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

import yaml

from vidseq.errors import VidseqError

T = TypeVar("T")


class ConfigError(VidseqError, ValueError):
    """A parameter is unknown, mistyped or out of range; the message names it."""


def read_yaml(path: str) -> dict[str, Any]:
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


def from_mapping(cls: type[T], values: Mapping[str, Any], prefix: str) -> T:
    """Builds dataclass ``cls`` from ``values``, checking keys and types against its fields.

    Raises:
        ConfigError: naming ``prefix.key`` for an unknown key, a wrong type or a value
            that the dataclass's own ``__post_init__`` rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        what = f"key {prefix}.{unknown[0]}" if prefix else f"section {unknown[0]}"
        raise ConfigError(
            f"unknown {what}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
            + f"; known {'keys' if prefix else 'sections'}: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {
        name: _coerce(hints[name], value, f"{prefix}.{name}" if prefix else name) for name, value in values.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix or 'params'}: {exc}") from exc


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
        if value is None:  # an empty section in YAML (`model:` with nothing under it): all defaults
            return hint()
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
