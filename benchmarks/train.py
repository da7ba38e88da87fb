"""Benchmark: the input pipeline's clips/s against the training step's clips/s, in one run.

``python benchmarks/train.py [--records DIR] [--params params.yaml] [--batches N]``

The input pipeline is measured reading shards, decoding JPEG/PNG, shuffling and batching (no
cache, so every clip is decoded; also once more with ``train.augment``), the training step by
``fit`` on one batch held in memory, on the model of ``params.yaml``. The ratio input/train must be at least 3: the
accelerator (here the CPU) should never wait for data. Without records (no
``dataset.json`` in ``--records``) it writes synthetic ones into a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import records  # noqa: E402
from training.data import make_dataset  # noqa: E402
from training.fit import compile_model  # noqa: E402
from training.model import build_model  # noqa: E402
from vidseq.params import ModelConfig, Params, TrainConfig  # noqa: E402

TARGET_RATIO = 3.0


def input_clips_per_second(
    records_dir: str, spec: records.DatasetSpec, cfg: TrainConfig, batches: int, augment: bool = False
) -> float:
    """Clips/s of the input pipeline: read, decode, shuffle, batch (and augment if asked); no cache."""
    ds = make_dataset(records_dir, "train", spec, cfg.batch_size, training=True,
                      augment=cfg.augment if augment else None, seed=cfg.seed,
                      shuffle_buffer=cfg.shuffle_buffer, cache=False).repeat()  # fmt: skip
    iterator = iter(ds)
    for _ in range(3):  # warm-up: tracing, thread pools, autotune
        next(iterator)
    start = time.perf_counter()
    clips = sum(int(next(iterator)[0].shape[0]) for _ in range(batches))
    return clips / (time.perf_counter() - start)


class _EpochTimer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds = time.perf_counter() - self.start


def train_clips_per_second(spec: records.DatasetSpec, model_cfg: ModelConfig, cfg: TrainConfig, steps: int) -> float:
    """Clips/s of ``fit`` on one in-memory batch repeated (the second epoch; the first traces)."""
    model = compile_model(build_model(spec, model_cfg), cfg, steps)
    clips = tf.random.uniform((cfg.batch_size, *spec.clip_shape))
    labels = tf.random.uniform((cfg.batch_size,), maxval=spec.num_classes, dtype=tf.int32)
    ds = tf.data.Dataset.from_tensors((clips, labels)).repeat()
    timer = _EpochTimer()
    model.fit(ds, steps_per_epoch=steps, epochs=2, callbacks=[timer], verbose=0, shuffle=False)
    return steps * cfg.batch_size / timer.seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--records", help="records directory (default: params data.records_dir)")
    parser.add_argument("--params", default=os.path.join(ROOT, "params.yaml"))
    parser.add_argument("--batches", type=int, default=40, help="batches timed in each measurement")
    args = parser.parse_args(argv)
    params = Params.load(args.params)
    model_cfg, train_cfg = params.model, params.train
    records_dir = args.records or os.path.join(ROOT, params.data.records_dir)
    with tempfile.TemporaryDirectory() as tmp:
        if not os.path.exists(os.path.join(records_dir, records.DATASET_JSON)):
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from training_fixtures import write_records

            print(f"no records in {records_dir}: writing synthetic ones (6 classes, 8x48x48) to {tmp}")
            records_dir = tmp
            write_records(tmp, videos_per_class={"train": 30, "val": 1}, clips_per_video=3)
        spec = records.read_spec(records_dir)
        input_rate = input_clips_per_second(records_dir, spec, train_cfg, args.batches)
        augmented_rate = input_clips_per_second(records_dir, spec, train_cfg, args.batches, augment=True)
    train_rate = train_clips_per_second(spec, model_cfg, train_cfg, args.batches)
    ratio = input_rate / train_rate
    print(f"records {records_dir}: clips {spec.clip_shape}, batch {train_cfg.batch_size}, {os.cpu_count()} CPUs")
    print(f"input pipeline (read, decode, batch):           {input_rate:8.1f} clips/s")
    print(f"input pipeline with train.augment:              {augmented_rate:8.1f} clips/s"
          f"  (ratio {augmented_rate / train_rate:.1f})")  # fmt: skip
    print(f"training step ({model_cfg.backbone} + {model_cfg.rnn}, fit on one batch): {train_rate:8.1f} clips/s")
    verdict = "ok: input is not the bottleneck" if ratio >= TARGET_RATIO else "input pipeline is the bottleneck"
    print(f"ratio input/train: {ratio:.1f} (target >= {TARGET_RATIO:g}; {verdict})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
