"""Test fixtures for training: synthetic moving-square records written with the real encoder.

Each "video" is a square (or, for zoom classes, a growing/shrinking square) of random size,
colour and speed over a random textured background with static distractors; its class is the
motion only, so a classifier has to look at the order of the frames. Clips are JPEG/PNG-encoded
with Pillow, serialised with :func:`pipeline.records.encode_clip` and written into
``records.shard_name(...)`` files beside a ``dataset.json``, exactly what the Beam job writes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

from pipeline import records
from pipeline.records import DatasetSpec

CLASSES = ("left", "right", "up", "down", "zoom_in", "zoom_out")


def render_video(label: str, rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Renders one synthetic video of class ``label``.

    Returns:
        uint8 ``(frames, height, width, 3)``.
    """
    side = min(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, 3)
    tilt = rng.normal(0, 40, (2, 3))
    background = base + (yy[..., None] / height - 0.5) * tilt[0] + (xx[..., None] / width - 0.5) * tilt[1]
    for _ in range(rng.integers(0, 3)):  # static distractors
        h, w = rng.integers(2, max(3, side // 6), 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        background[y : y + h, x : x + w] = rng.uniform(0, 255, 3)
    colour = (base + rng.choice([-1, 1], 3) * rng.uniform(90, 160, 3)) % 256

    t = np.linspace(0.0, 1.0, frames)
    if label in ("zoom_in", "zoom_out"):
        small, large = rng.uniform(0.12, 0.2) * side, rng.uniform(0.45, 0.6) * side
        sizes = small + (large - small) * (t if label == "zoom_in" else 1.0 - t)
        cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
        centres = np.stack([np.full(frames, cy), np.full(frames, cx)], axis=1)
    else:
        size = rng.uniform(0.18, 0.28) * side
        sizes = np.full(frames, size)
        axis = 1 if label in ("left", "right") else 0
        extent = (height, width)[axis]
        travel = rng.uniform(0.35, 0.6) * extent
        start = rng.uniform(size / 2, extent - size / 2 - travel)
        sign = 1.0 if label in ("right", "down") else -1.0
        along = start + travel * t if sign > 0 else start + travel * (1.0 - t)
        across = np.full(frames, rng.uniform(size / 2, (height, width)[1 - axis] - size / 2))
        centres = np.stack([along, across], axis=1) if axis == 0 else np.stack([across, along], axis=1)

    video = np.empty((frames, height, width, 3), np.float32)
    for i in range(frames):
        (cy, cx), half = centres[i], sizes[i] / 2
        inside = (np.abs(yy - cy) <= half) & (np.abs(xx - cx) <= half)
        video[i] = np.where(inside[..., None], colour, background)
    video += rng.normal(0, 6, video.shape)
    return np.clip(video, 0, 255).astype(np.uint8)


def encode_frame(frame: np.ndarray, encoding: str = "jpeg") -> bytes:
    buffer = io.BytesIO()
    if encoding == "png":
        Image.fromarray(frame).save(buffer, format="PNG")
    else:
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_records(
    directory: str,
    *,
    classes: Sequence[str] = CLASSES,
    videos_per_class: Mapping[str, int] | None = None,
    clips_per_video: int = 2,
    sequence_length: int = 8,
    height: int = 48,
    width: int = 48,
    encoding: str = "jpeg",
    compressed: bool = False,
    shards: int = 2,
    seed: int = 0,
) -> DatasetSpec:
    """Writes synthetic records (shards + dataset.json) into ``directory``.

    Args:
        directory: created if needed.
        classes: class names, each one of :data:`CLASSES`.
        videos_per_class: ``{split: videos of each class}``; default train 6, val 2, test 2.
        clips_per_video: clips cut from each video (overlapping by half a clip).
        sequence_length: T.
        height: H.
        width: W.
        encoding: ``jpeg`` or ``png``.
        compressed: GZIP shards (``.tfrecord.gz``).
        shards: shard files per split.
        seed: seeds the videos.

    Returns:
        The :class:`DatasetSpec` written as ``dataset.json``.
    """
    import tensorflow as tf

    videos_per_class = dict(videos_per_class or {"train": 6, "val": 2, "test": 2})
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    stride = max(1, sequence_length // 2)
    frames = sequence_length + (clips_per_video - 1) * stride
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compressed else "")
    splits = {}
    for split, per_class in videos_per_class.items():
        examples = []
        for label, name in enumerate(classes):
            for v in range(per_class):
                video_id = f"{name}/{split}_{v:03d}.mp4"
                video = render_video(name, rng, frames, height, width)
                for c in range(clips_per_video):
                    idx = list(range(c * stride, c * stride + sequence_length))
                    examples.append(
                        records.encode_clip(
                            [encode_frame(video[i], encoding) for i in idx],
                            label,
                            name,
                            video_id,
                            idx,
                            [i / 8.0 for i in idx],
                        )
                    )
        order = rng.permutation(len(examples))
        count = max(1, min(shards, len(examples)))
        for s in range(count):
            path = os.path.join(directory, records.shard_name(split, s, count, compressed))
            with tf.io.TFRecordWriter(path, options) as writer:
                for i in order[s::count]:
                    writer.write(examples[i])
        splits[split] = {"clips": len(examples), "videos": per_class * len(classes)}
    spec = DatasetSpec(
        sequence_length=sequence_length,
        height=height,
        width=width,
        channels=3,
        frame_encoding=encoding,
        classes=tuple(classes),
        splits=splits,
        compression="gzip" if compressed else "none",
        sampling={"synthetic": True, "clips_per_video": clips_per_video},
    )
    with open(os.path.join(directory, records.DATASET_JSON), "w", encoding="utf-8") as handle:
        handle.write(spec.to_json())
    return spec
