"""Tests of pipeline.inspect: records written by hand, checked against dataset.json."""

from __future__ import annotations

import gzip
import io
import json
import os

import pytest
from PIL import Image

from pipeline import inspect as insp
from pipeline import records, sheets

CLASSES = ("MoveLeft", "MoveRight", "ZoomIn")
T, H, W = 4, 12, 16


def frame_bytes(height: int = H, width: int = W, fmt: str = "JPEG", value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (value, 255 - value, 128)).save(buffer, format=fmt)
    return buffer.getvalue()


def make_clip(label: int, video: str, *, frames: int = T, height: int = H, name: str | None = None) -> bytes:
    return records.encode_clip(
        frames=[frame_bytes(height=height, value=40 * i) for i in range(frames)],
        label=label,
        label_name=CLASSES[label] if name is None and label < len(CLASSES) else (name or "?"),
        video_id=video,
        frame_indices=list(range(0, 3 * frames, 3)),
        timestamps=[i / 8 for i in range(frames)],
    )


def good_clips() -> dict[str, list[bytes]]:
    """train: 2 clips from each of 3 videos; val: 1 clip of 1 video; test: 2 clips of 2 videos."""
    train = [make_clip(label, f"{CLASSES[label]}/v_{CLASSES[label]}_g01_c01.mp4") for label in range(3) for _ in range(2)]
    val = [make_clip(0, "MoveLeft/v_MoveLeft_g02_c01.avi")]
    test = [make_clip(1, "MoveRight/v_MoveRight_g03_c01.webm"), make_clip(2, "ZoomIn/v_ZoomIn_g03_c01.webm")]
    return {"train": train, "val": val, "test": test}


def write_records(
    directory: str,
    clips: dict[str, list[bytes]],
    *,
    compressed: bool = False,
    shards: int = 2,
    errors: list[dict] | None = None,
    spec_splits: dict | None = None,
) -> str:
    """Writes shards (round-robin), errors.jsonl and a dataset.json that matches them."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.io.tfrecordio import _TFRecordUtil

    os.makedirs(directory, exist_ok=True)
    for split, serialized in clips.items():
        for index in range(shards):
            path = os.path.join(directory, records.shard_name(split, index, shards, compressed))
            with FileSystems.create(path) as handle:  # .gz -> gzip
                for record in serialized[index::shards]:
                    _TFRecordUtil.write_record(handle, record)
    errors = errors or []
    with open(os.path.join(directory, records.ERRORS_JSONL), "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(e) + "\n" for e in errors)
    splits = spec_splits or {
        split: {"clips": len(c), "videos": len({records.decode_clip(r)["video_id"] for r in c})}
        for split, c in clips.items()
    }
    spec = records.DatasetSpec(
        sequence_length=T, height=H, width=W, channels=3, frame_encoding="jpeg", classes=CLASSES,
        splits=splits, errors=len(errors), compression="gzip" if compressed else "none",
    )
    with open(os.path.join(directory, records.DATASET_JSON), "w", encoding="utf-8") as handle:
        handle.write(spec.to_json())
    return directory


def test_consistent_directory_passes_and_prints_counts(tmp_path, capsys):
    errors = [{"path": "ZoomIn/bad.mp4", "reason": "corrupt", "stage": "decode"},
              {"path": "ZoomIn/short.mp4", "reason": "too short", "stage": "sample"},
              {"path": "MoveLeft/bad.avi", "reason": "corrupt", "stage": "decode"}]
    directory = write_records(str(tmp_path), good_clips(), errors=errors)

    assert insp.main([directory]) == 0

    out = capsys.readouterr().out
    assert "train: 6 clips from 3 videos in 2 shard(s); clips (4, 12, 16, 3) jpeg" in out
    assert "MoveLeft 2, MoveRight 2, ZoomIn 2" in out
    assert "val: 1 clips from 1 videos" in out and "MoveLeft 1, MoveRight 0, ZoomIn 0" in out
    assert "test: 2 clips from 2 videos" in out
    assert "3 videos without clips: decode/corrupt 2, sample/too short 1" in out
    assert "OK: 9 clips match dataset.json" in out


def test_gzip_shards_are_read(tmp_path, capsys):
    directory = write_records(str(tmp_path), good_clips(), compressed=True, shards=3)
    assert any(name.endswith(".tfrecord.gz") for name in os.listdir(directory))

    assert insp.main([directory]) == 0
    assert "OK: 9 clips" in capsys.readouterr().out


@pytest.mark.parametrize(
    "bad_clip, expected",
    [
        (make_clip(0, "MoveLeft/x.mp4", frames=T + 1), "5 frames but dataset.json sequence_length is 4"),
        (make_clip(0, "MoveLeft/x.mp4", height=H + 2), "frame 0 is HxWxC (14, 16, 3), dataset.json says (12, 16, 3)"),
        (make_clip(3, "MoveLeft/x.mp4"), "label 3 out of range 0..2"),
        (make_clip(1, "MoveLeft/x.mp4", name="MoveLeft"), "label_name 'MoveLeft' but classes[1] is 'MoveRight'"),
    ],
    ids=["frame-count", "frame-size", "label-range", "label-name"],
)
def test_bad_record_is_reported(tmp_path, capsys, bad_clip, expected):
    clips = good_clips()
    clips["val"].append(bad_clip)
    directory = write_records(str(tmp_path), clips)

    assert insp.main([directory]) == 1

    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM:")]
    assert len(problems) == 1, out
    assert "val-0000" in problems[0] and "(MoveLeft/x.mp4)" in problems[0] and expected in problems[0]
    assert "FAILED: 1 problem(s)" in out


def test_counts_that_disagree_with_dataset_json_are_reported(tmp_path):
    splits = {"train": {"clips": 7, "videos": 3}, "val": {"clips": 1, "videos": 1}}
    directory = write_records(str(tmp_path), good_clips(), spec_splits=splits)

    problems = insp.inspect_records(directory).problems

    assert any("train: 6 clips in shards, dataset.json splits.train.clips is 7" in p for p in problems)
    assert any(p.startswith("test: 2 clips in shards but no such split") for p in problems)


def test_leaked_video_missing_shard_and_compression_mismatch_are_reported(tmp_path):
    clips = good_clips()
    clips["test"].append(make_clip(0, "MoveLeft/v_MoveLeft_g02_c01.avi"))  # also in val
    directory = write_records(str(tmp_path), clips, shards=3)
    os.remove(os.path.join(directory, records.shard_name("train", 1, 3)))
    plain = os.path.join(directory, records.shard_name("val", 0, 3))
    with open(plain, "rb") as source, gzip.open(plain + ".gz", "wb") as target:
        target.write(source.read())
    os.remove(plain)

    problems = "\n".join(insp.inspect_records(directory).problems)

    assert "video MoveLeft/v_MoveLeft_g02_c01.avi is in both val and test" in problems
    assert "train: 2 of 3 shards present, missing indices [1]" in problems
    assert "gzip shard, dataset.json compression is none" in problems


def test_corrupt_shard_is_reported(tmp_path, capsys):
    directory = write_records(str(tmp_path), good_clips(), shards=1)
    path = os.path.join(directory, records.shard_name("train", 0, 1))
    data = bytearray(open(path, "rb").read())
    data[100] ^= 0xFF  # inside the first record's payload: data CRC mismatch
    open(path, "wb").write(bytes(data))

    assert insp.main([directory]) == 1

    out = capsys.readouterr().out
    assert "PROBLEM: train-00000-of-00001.tfrecord: record #0 unreadable" in out
    assert "corrupted record at 0 (data CRC mismatch)" in out


def test_missing_dataset_json_is_one_line(tmp_path, capsys):
    assert insp.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out.strip()
    assert out.startswith("PROBLEM:") and "dataset.json not found" in out and "\n" not in out


def test_contact_sheet_is_a_png_of_the_expected_size(tmp_path, capsys):
    directory = write_records(str(tmp_path / "records"), good_clips())
    sheet = str(tmp_path / "out" / "sheet.png")

    assert insp.main([directory, "--contact-sheet", sheet, "--clips-per-class", "2", "--scale", "3"]) == 0

    # two clips of distinct videos exist for MoveLeft (train + val), MoveRight (train + test), ZoomIn
    image = Image.open(sheet)
    assert image.format == "PNG"
    assert image.size == sheets.sheet_size(6, T, H, W, 3)
    assert image.size == (sheets.LABEL_WIDTH + T * (W * 3 + sheets.GAP), sheets.GAP + 6 * (H * 3 + sheets.GAP))
    left = sheets.LABEL_WIDTH
    top = sheets.GAP
    assert image.convert("RGB").getpixel((left + 1, top + 1)) != (32, 32, 32)  # a frame, not background


def test_check_clip_accepts_a_good_clip():
    spec = records.DatasetSpec(sequence_length=T, height=H, width=W, channels=3, frame_encoding="jpeg", classes=CLASSES)
    clip = records.decode_clip(make_clip(2, "ZoomIn/a.mp4"))
    assert insp.check_clip(clip, spec) == []
    png = records.DatasetSpec(sequence_length=T, height=H, width=W, channels=3, frame_encoding="png", classes=CLASSES)
    assert insp.check_clip(clip, png) == ["frame 0 is JPEG, dataset.json frame_encoding is png"]
