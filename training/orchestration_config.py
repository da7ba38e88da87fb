"""Orchestration parameters: the ``mlflow`` and ``register`` sections of ``params.yaml``.

Built and validated by :func:`pipeline.config.load_section` like every other section, so a
wrong key is a one-line :class:`~pipeline.config.ConfigError` before MLflow is touched::

    register_cfg = load_section(RegisterConfig, "params.yaml", "register")

This module imports neither MLflow nor TensorFlow: ``training.summary`` and ``training.predict``
read it cheaply.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pipeline.config import ConfigError, check, load_section

__all__ = ["CHALLENGER", "CHAMPION", "ConfigError", "MlflowConfig", "RegisterConfig", "load_section"]

CHAMPION = "champion"
"""Alias of the version that serves: moved only by a passing promotion gate."""
CHALLENGER = "challenger"
"""Alias of the most recently registered version, promoted or not."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
