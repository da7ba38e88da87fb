"""Tests of pipeline.manifest: UCF101's and HMDB51's published split lists become a manifest the job keeps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from videos import write_tiny_video

from pipeline import manifest, records
from pipeline.sources import InputError, list_videos

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("ApplyEyeMakeup", "Archery")


def ucf_lists(folder: Path, groups=range(1, 7), test_groups=(1, 2)) -> Path:
    """UCF101-style lists: classInd.txt, trainlist01.txt (with labels), testlist01.txt (without)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "classInd.txt").write_text("".join(f"{i} {name}\r\n" for i, name in enumerate(CLASSES, start=1)))
    train, test = [], []
    for index, name in enumerate(CLASSES, start=1):
        for g in groups:
            for c in (1, 2):
                path = f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi"
                (test.append(path) if g in test_groups else train.append(f"{path} {index}"))
    (folder / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")
    (folder / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    return folder


def test_ucf101_lists_give_train_test_and_groups():
    rows = manifest.ucf101_rows(
        "1 ApplyEyeMakeup\n2 Archery\n",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\nArchery/v_Archery_g09_c02.avi 2\n",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n",
    )
    assert rows == [
        manifest.Row("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "ApplyEyeMakeup/g08", "train"),
        manifest.Row("Archery/v_Archery_g09_c02.avi", "Archery", "Archery/g09", "train"),
        manifest.Row("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "ApplyEyeMakeup/g01", "test"),
    ]


def test_ucf101_label_that_disagrees_with_the_folder_is_refused():
    with pytest.raises(InputError, match=r"trainlist line 1: class index 2 is 'Archery' in classInd.txt but the video lies in 'ApplyEyeMakeup'"):
        manifest.ucf101_rows("1 ApplyEyeMakeup\n2 Archery\n", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 2\n", "")


def test_hmdb51_lists_keep_train_and_test_and_leave_out_unused():
    lists = {
        "brush_hair_test_split1.txt": "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
                                      "April_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \nBlonde_brush_hair_f_nm_np2_le_med_0.avi 0 \n",
        "brush_hair_test_split2.txt": "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 2 \n",
        "cartwheel_test_split1.txt": "Bodenturnen_cartwheel_f_cm_np1_le_med_3.avi 1\n",
    }  # fmt: skip
    rows = manifest.hmdb51_rows(lists, fold=1)
    assert [(r.path, r.split, r.group) for r in rows] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "train", "brush_hair/April_09"),
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "test", "brush_hair/April_09"),
        ("cartwheel/Bodenturnen_cartwheel_f_cm_np1_le_med_3.avi", "train", "cartwheel/Bodenturnen"),
    ]
    assert {r.label for r in rows} == {"brush_hair", "cartwheel"}
    assert [r.split for r in manifest.hmdb51_rows(lists, fold=2)] == ["test"]
    with pytest.raises(InputError, match="no HMDB51 list of fold 3"):
        manifest.hmdb51_rows(lists, fold=3)
    with pytest.raises(InputError, match=r"cartwheel_test_split1.txt line 1: expected '<video>.avi <0\|1\|2>'"):
        manifest.hmdb51_rows({"cartwheel_test_split1.txt": "x.avi 3\n"}, fold=1)


def test_val_is_carved_from_train_by_whole_groups_per_class_deterministically():
    rows = [manifest.Row(f"{c}/v_{c}_g{g:02d}_c{k}.avi", c, f"{c}/g{g:02d}", "train" if g > 2 else "test")
            for c in CLASSES for g in range(1, 13) for k in (1, 2)]  # fmt: skip
    carved = manifest.carve_val(rows, 0.2)
    assert carved == manifest.carve_val(rows, 0.2)  # the same every run
    assert carved != manifest.carve_val(rows, 0.2, salt="other")
    for name in CLASSES:
        val_groups = {r.group for r in carved if r.label == name and r.split == "val"}
        assert len(val_groups) == 2  # 20 % of 10 train groups
        assert not {r.group for r in carved if r.split == "train"} & val_groups  # never straddles
    assert [r.split for r in carved if r.split == "test"] == [r.split for r in rows if r.split == "test"]
    assert manifest.carve_val(rows, 0.0) == rows


def test_cli_writes_a_manifest_the_job_keeps_split_by_split(tmp_path):
    videos = tmp_path / "UCF-101"
    lists = ucf_lists(tmp_path / "ucfTrainTestlist", groups=range(1, 5), test_groups=(1,))
    for index, name in enumerate(CLASSES):
        for g in range(1, 5):
            for c in (1, 2):
                write_tiny_video(videos / name / f"v_{name}_g{g:02d}_c{c:02d}.avi", seconds=0.5, size=(16, 16),
                                 dx=1 - index, dy=index, seed=g * 3 + c)  # fmt: skip
    os.unlink(videos / "Archery" / "v_Archery_g04_c02.avi")
    out = tmp_path / "manifests" / "ucf101-1.csv"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.manifest", "ucf101", "--videos", str(videos), "--lists", str(lists),
         "--output", str(out), "--val-fraction", "0.34"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "16 videos in 2 classes (train 8, val 4, test 4)" in done.stdout
    assert "1 listed video(s) are not under" in done.stderr and "v_Archery_g04_c02.avi" in done.stderr
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["path"] == "../UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"  # relative to the manifest
    expected = {r["path"]: r["split"] for r in rows}
    listing = list_videos(str(out), {"train": 1.0}, "any")  # the column wins over any draw
    missing = "../UCF-101/Archery/v_Archery_g04_c02.avi"
    assert {i.video_id: i.split for i in listing.items} == {p: s for p, s in expected.items() if p != missing}
    assert [e["path"] for e in listing.errors] == [missing]

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": {"sequence_length": 4, "height": 16, "width": 16,
                                                     "clips_per_video": 1, "splits": {"train": 1.0}}}))  # fmt: skip
    job = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(out), "--output", str(tmp_path / "records"),
         "--params", str(params), "--direct_running_mode=in_memory"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert job.returncode == 0, job.stderr
    found = {}
    for split in records.SPLITS:
        for shard in sorted((tmp_path / "records").glob(records.shard_pattern(split))):
            for record in _records(shard):
                found[records.decode_clip(record)["video_id"]] = split
    assert found == {i.video_id: i.split for i in listing.items}


def _records(path: Path):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        yield data[offset + 12 : offset + 12 + length]
        offset += length + 16
