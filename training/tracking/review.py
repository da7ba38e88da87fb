"""What a reviewer looks at in the run: test clips with their labels, as a sheet and an animation, per-class table.

After evaluation, the clips of the evaluated split are paired with their rows of
``predictions.csv`` (same order: the evaluation reads the split unshuffled; the video ids are
checked) and a few are drawn:

* ``evaluation/test_clips.png``: a contact sheet (:func:`pipeline.sheets.labelled_sheet`), one
  row per clip, frame by frame, titled ``true -> predicted`` with the confidence; the worst
  misclassified clips (most confident mistakes) first, then a correctly classified clip of each class;
* ``evaluation/test_clips.gif``: the same clips side by side, played at the records' fps, so
  the motion the LSTM sees is visible;
* ``evaluation/per_class_table.json``: ``per_class.csv`` as an MLflow table (``mlflow.log_table``),
  which the UI's artifact view shows as a sortable table.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import mlflow
import numpy as np
from PIL import Image, ImageDraw

from pipeline.sheets import labelled_sheet
from pipeline.records import DatasetSpec
from training.artifacts import PER_CLASS_CSV, PREDICTIONS_CSV

logger = logging.getLogger(__name__)

SHEET_PNG = "test_clips.png"
CLIPS_GIF = "test_clips.gif"
PER_CLASS_TABLE = "per_class_table.json"
FOLDER = "evaluation"
SHEET_ROWS = 12
GIF_CLIPS = 6
LABEL_HEIGHT = 24  # pixels above each clip of the animation for its labels


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One row of ``predictions.csv``: the clip's position in the split, video, labels, confidence."""

    index: int
    video_id: str
    actual: str
    predicted: str
    confidence: float

    @property
    def correct(self) -> bool:
        return self.actual == self.predicted


def read_predictions(path: str) -> list[Prediction]:
    """The rows of ``predictions.csv`` in file order (the order of the split's clips)."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [
            Prediction(i, row["video_id"], row["actual"], row["predicted"], float(row["confidence"]))
            for i, row in enumerate(csv.DictReader(handle))
        ]


def pick(predictions: Sequence[Prediction], classes: Sequence[str], count: int = SHEET_ROWS) -> list[Prediction]:
    """The clips to show: mistakes, most confident first, then one correct clip per class (least confident first).

    At most one clip of each video among the mistakes' and the correct ones', so a sheet shows
    different videos where it can.
    """
    wrong = sorted((p for p in predictions if not p.correct), key=lambda p: (-p.confidence, p.index))
    chosen: list[Prediction] = []
    videos: set[str] = set()
    for p in wrong:
        if len(chosen) < count and p.video_id not in videos:
            chosen.append(p)
            videos.add(p.video_id)
    right = sorted((p for p in predictions if p.correct), key=lambda p: (p.confidence, p.index))
    for name in classes:
        for p in right:
            if len(chosen) < count and p.actual == name and p.video_id not in videos:
                chosen.append(p)
                videos.add(p.video_id)
                break
    return chosen


def read_clips(records_dir: str, spec: DatasetSpec, split: str, rows: Sequence[Prediction]) -> dict[int, np.ndarray]:
    """The ``(T, H, W, C)`` uint8 clips at the rows' positions in ``split``, read as evaluation read them.

    Raises:
        ValueError: if a clip's video id differs from its row's (the records changed since evaluation).
    """
    from training.data import make_dataset
    from training.shards import reading_records

    wanted = {p.index: p for p in rows}
    last = max(wanted, default=-1)
    found: dict[int, np.ndarray] = {}
    position = 0
    ds = make_dataset(records_dir, split, spec, 64, with_video_id=True)
    with reading_records(records_dir, spec, split):
        for clips, _, video_ids in ds.as_numpy_iterator():
            for clip, video in zip(clips, video_ids):
                if position in wanted:
                    if video.decode("utf-8") != wanted[position].video_id:
                        raise ValueError(
                            f"clip {position} of split {split!r} is of video {video.decode('utf-8')!r}, but "
                            f"predictions.csv says {wanted[position].video_id!r}: evaluate again on these records"
                        )
                    found[position] = np.round(clip * 255.0).astype(np.uint8)
                position += 1
            if position > last:
                break
    return found


def _title(p: Prediction) -> tuple[str, str]:
    mark = "ok" if p.correct else "WRONG"
    stem = os.path.splitext(os.path.basename(p.video_id))[0]
    return f"{p.actual} -> {p.predicted}", f"{mark} {p.confidence:.2f} {stem[-14:]}"  # the end tells videos apart


def sheet(rows: Sequence[Prediction], clips: dict[int, np.ndarray], spec: DatasetSpec) -> Image.Image:
    """The contact sheet of ``rows`` (see the module docstring)."""
    return labelled_sheet([(*_title(p), list(clips[p.index])) for p in rows if p.index in clips], spec)


def animation_frames(rows: Sequence[Prediction], clips: dict[int, np.ndarray], spec: DatasetSpec,
                     scale: int = 2) -> list[Image.Image]:  # fmt: skip
    """One image per time step: the clips side by side, each under its ``true -> predicted`` label."""
    shown = [p for p in rows if p.index in clips]
    t, h, w = spec.sequence_length, spec.height * scale, max(spec.width * scale, 96)
    frames = []
    for step in range(t):
        image = Image.new("RGB", (len(shown) * (w + 4) + 4, h + LABEL_HEIGHT + 16), (32, 32, 32))
        draw = ImageDraw.Draw(image)
        for column, p in enumerate(shown):
            left = 4 + column * (w + 4)
            color = (120, 220, 120) if p.correct else (255, 110, 110)
            draw.text((left, 2), p.actual[:16], fill=(255, 255, 255))
            draw.text((left, 12), ("-> " + p.predicted)[:16], fill=color)
            frame = Image.fromarray(clips[p.index][step]).resize((spec.width * scale, h), Image.NEAREST)
            image.paste(frame, (left, LABEL_HEIGHT))
        draw.text((4, LABEL_HEIGHT + h + 3), f"frame {step + 1}/{t}", fill=(160, 160, 160))
        frames.append(image)
    return frames


def write_gif(frames: Sequence[Image.Image], path: str, fps: float) -> None:
    """An endlessly looping GIF of ``frames`` at ``fps``."""
    duration = max(20, int(round(1000.0 / fps))) if fps and fps > 0 else 125
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=duration, loop=0)


def per_class_table(per_class_csv: str) -> dict[str, list[Any]]:
    """``per_class.csv`` as columns (numbers as numbers), for ``mlflow.log_table``."""
    with open(per_class_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[Any]] = {name: [] for name in (rows[0] if rows else [])}
    for row in rows:
        for name, value in row.items():
            columns[name].append(value if name == "class" else int(value) if name.endswith("support") else float(value))
    return columns


def _has_artifact(run_id: str, path: str) -> bool:
    folder = os.path.dirname(path)
    return any(a.path == path for a in mlflow.MlflowClient().list_artifacts(run_id, folder or None))


def log_review(run_id: str, records_dir: str, reports_dir: str, spec: DatasetSpec, split: str) -> list[str]:
    """Logs the sheet, the animation and the per-class table into the active run.

    Returns:
        The artifact paths logged (the table is not appended to twice: ``log_table`` would).
    """
    logged = []
    per_class = os.path.join(reports_dir, PER_CLASS_CSV)
    table = f"{FOLDER}/{PER_CLASS_TABLE}"
    if os.path.exists(per_class) and not _has_artifact(run_id, table):
        with warnings.catch_warnings():  # MLflow's select_dtypes("object") warns under pandas 3 about str columns
            warnings.simplefilter("ignore")
            mlflow.log_table(per_class_table(per_class), table)
        logged.append(table)
    predictions = os.path.join(reports_dir, PREDICTIONS_CSV)
    if not os.path.exists(predictions):
        return logged
    rows = pick(read_predictions(predictions), spec.classes)
    clips = read_clips(records_dir, spec, split, rows)
    if not clips:
        return logged
    with tempfile.TemporaryDirectory(prefix="vidseq-review-") as tmp:
        sheet_path = os.path.join(tmp, SHEET_PNG)
        sheet(rows, clips, spec).save(sheet_path)
        gif_path = os.path.join(tmp, CLIPS_GIF)
        write_gif(animation_frames(rows[:GIF_CLIPS], clips, spec), gif_path, float(spec.sampling.get("fps") or 8.0))
        for path in (sheet_path, gif_path):
            mlflow.log_artifact(path, FOLDER)
            logged.append(f"{FOLDER}/{os.path.basename(path)}")
    return logged
