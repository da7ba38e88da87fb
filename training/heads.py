"""The heads of the video model: per-frame features ``(batch, T, F)`` -> class probabilities.

``model.head``:

* ``rnn``: LSTM/GRU layers (``model.rnn*``), dropout, Dense softmax: learns the order of events.
* ``temporal_stats``: each feature summarised over time (``model.statistics``: its mean, its
  standard deviation, its mean absolute frame-to-frame change), dropout, Dense softmax with an L2
  penalty: a logistic regression on the statistics. Few parameters, so it suits a few hundred
  clips of frozen pretrained features; the change statistic keeps some of the motion.

Both end in the same ``probabilities`` layer (float32; L2 ``model.l2`` for ``temporal_stats``). Built-in Keras layers
only, plus :class:`TemporalStatistics` (registered, so every ``.keras`` file that holds it loads
wherever this module is imported: :mod:`training.model` imports it).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers, ops

from vidseq.params import ModelConfig

HEAD = "head"
"""Name of the head sub-model of a video model with a pretrained backbone."""


@keras.saving.register_keras_serializable(package="vidseq")
class TemporalStatistics(layers.Layer):
    """``(batch, T, F)`` -> ``(batch, len(statistics) * F)``: per-feature statistics over time.

    Args:
        statistics: any of ``mean``, ``std`` (population standard deviation) and ``change``
            (mean absolute difference between consecutive steps), concatenated in this order.
    """

    ORDER = ("mean", "std", "change")

    def __init__(self, statistics: tuple[str, ...] | list[str] = ORDER, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        unknown = sorted(set(statistics) - set(self.ORDER))
        if unknown or not statistics:
            raise ValueError(f"statistics must be a non-empty subset of {self.ORDER}, got {list(statistics)}")
        self.statistics = tuple(s for s in self.ORDER if s in statistics)

    def call(self, x: Any) -> Any:
        out = []
        mean = ops.mean(x, axis=1)
        if "mean" in self.statistics:
            out.append(mean)
        if "std" in self.statistics:
            centred = x - ops.expand_dims(mean, 1)
            out.append(ops.sqrt(ops.mean(centred * centred, axis=1) + 1e-12))
        if "change" in self.statistics:
            out.append(ops.mean(ops.abs(x[:, 1:] - x[:, :-1]), axis=1))
        return ops.concatenate(out, axis=-1)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        features = input_shape[-1]
        return (input_shape[0], None if features is None else features * len(self.statistics))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "statistics": list(self.statistics)}


def apply_head(x: keras.KerasTensor, cfg: ModelConfig, num_classes: int) -> keras.KerasTensor:
    """Applies ``cfg``'s head to per-frame features ``x`` ``(batch, T, F)``; returns the probabilities."""
    if cfg.head == "temporal_stats":
        if "change" in cfg.statistics and x.shape[1] is not None and x.shape[1] < 2:
            raise ValueError("model.statistics change needs clips of 2 or more frames: drop it or sample more frames")
        x = TemporalStatistics(cfg.statistics, name="temporal_statistics")(x)
        if cfg.standardize:
            x = layers.Normalization(name="standardize")(x)  # adapted to the training clips' statistics
    else:
        for i in range(cfg.rnn_layers):
            last = i == cfg.rnn_layers - 1
            rnn_cls = layers.LSTM if cfg.rnn == "lstm" else layers.GRU
            rnn = rnn_cls(cfg.rnn_units, return_sequences=not last, name=f"{cfg.rnn}_{i + 1}")
            x = layers.Bidirectional(rnn, name=f"bi_{cfg.rnn}_{i + 1}")(x) if cfg.bidirectional else rnn(x)
    if cfg.dropout > 0:
        x = layers.Dropout(cfg.dropout, name="dropout")(x)
    regularizer = keras.regularizers.L2(cfg.l2) if cfg.l2 and cfg.head == "temporal_stats" else None
    return layers.Dense(
        num_classes, activation="softmax", dtype="float32", kernel_regularizer=regularizer, name="probabilities"
    )(x)


def build_head(steps: int, features: int, cfg: ModelConfig, num_classes: int) -> keras.Model:
    """The head as a model of its own: ``(batch, steps, features)`` -> ``(batch, classes)``."""
    inputs = keras.Input((steps, features), name="features")
    return keras.Model(inputs, apply_head(inputs, cfg, num_classes), name=HEAD)


def standardizer(head: keras.Model) -> Any:
    """The head's ``standardize`` layer (``temporal_stats`` with ``model.standardize``), else ``None``."""
    try:
        return head.get_layer("standardize")
    except ValueError:
        return None
