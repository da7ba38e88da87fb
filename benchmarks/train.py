"""Benchmark: the input pipeline's clips/s against the training step's clips/s, in one run.

``python benchmarks/train.py [--records DIR|s3://...|gs://...] [--serve-s3] [--params params.yaml] [--batches N]``

The input pipeline is measured reading shards, decoding JPEG/PNG, shuffling and batching (no
cache, so every clip is decoded and, from an object store, every shard downloaded again; also
once more with ``train.augment``), the training step by ``fit`` on one batch held in memory, on
the model of ``params.yaml``. The ratio input/train must be at least 3: the accelerator (here
the CPU) should never wait for data. Without records (no ``dataset.json`` in ``--records``) it
writes synthetic ones into a temporary directory.

``--records s3://bucket/prefix`` reads them where they are (the AWS variables configure the
endpoint and credentials); ``--serve-s3`` starts moto's S3 server on a loopback port, uploads
the records there and measures reading them back through it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline import records, storage  # noqa: E402
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


@contextlib.contextmanager
def moto_s3(records_dir: str) -> Iterator[str]:
    """moto's S3 server on a free loopback port holding a copy of ``records_dir``; yields its ``s3://`` URL.

    Sets the AWS variables of this process to reach it, as a user would for any S3-compatible store.
    """
    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = os.path.join(os.path.dirname(sys.executable), "moto_server")
    with open(os.devnull, "wb") as quiet:
        process = subprocess.Popen([server, "-H", "127.0.0.1", "-p", str(port)], stdout=quiet, stderr=quiet)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("moto_server did not start (pip install 'moto[server]')") from None
                time.sleep(0.2)
        os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench",
                          AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1")  # fmt: skip
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="bench")
        for name in sorted(os.listdir(records_dir)):
            if os.path.isfile(os.path.join(records_dir, name)):
                s3.upload_file(os.path.join(records_dir, name), "bench", f"records/{name}")
        yield "s3://bench/records"
    finally:
        process.terminate()
        process.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/train.py", description=__doc__.splitlines()[0])
    parser.add_argument("--records", help="records: a folder, s3:// or gs:// (default: params data.records_dir)")
    parser.add_argument("--serve-s3", action="store_true",
                        help="serve the records from moto's S3 on loopback and read them from there")  # fmt: skip
    parser.add_argument("--params", default=os.path.join(ROOT, "params.yaml"))
    parser.add_argument("--batches", type=int, default=40, help="batches timed in each measurement")
    args = parser.parse_args(argv)
    params = Params.load(args.params)
    model_cfg, train_cfg = params.model, params.train
    records_dir = args.records or os.path.join(ROOT, params.data.records_dir)
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        if not storage.exists(storage.join(records_dir, records.DATASET_JSON)):
            sys.path.insert(0, os.path.join(ROOT, "tests"))
            from training_fixtures import write_records

            print(f"no records in {records_dir}: writing synthetic ones (6 classes, 8x48x48) to {tmp}")
            records_dir = tmp
            write_records(tmp, videos_per_class={"train": 30, "val": 1}, clips_per_video=3)
        if args.serve_s3:
            records_dir = stack.enter_context(moto_s3(records_dir))
        spec = records.read_spec(records_dir)
        input_rate = input_clips_per_second(records_dir, spec, train_cfg, args.batches)
        augmented_rate = input_clips_per_second(records_dir, spec, train_cfg, args.batches, augment=True)
        where = f" (moto's S3 on loopback, {os.environ['AWS_ENDPOINT_URL']})" if args.serve_s3 else ""
    train_rate = train_clips_per_second(spec, model_cfg, train_cfg, args.batches)
    ratio = input_rate / train_rate
    print(f"records {records_dir}{where}: clips {spec.clip_shape}, batch {train_cfg.batch_size}, {os.cpu_count()} CPUs")
    print(f"input pipeline (read, decode, batch):           {input_rate:8.1f} clips/s")
    print(f"input pipeline with train.augment:              {augmented_rate:8.1f} clips/s"
          f"  (ratio {augmented_rate / train_rate:.1f})")  # fmt: skip
    print(f"training step ({model_cfg.backbone} + {model_cfg.rnn}, fit on one batch): {train_rate:8.1f} clips/s")
    verdict = "ok: input is not the bottleneck" if ratio >= TARGET_RATIO else "input pipeline is the bottleneck"
    print(f"ratio input/train: {ratio:.1f} (target >= {TARGET_RATIO:g}; {verdict})")
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
