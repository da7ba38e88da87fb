"""Tests of pipeline.reuse: a re-run decodes only new or changed videos and writes the records a fresh run writes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from videos import write_tiny_video

from pipeline import records, reuse
from pipeline.sources import VideoItem
from pipeline.video_types import EncodedClip
from vidseq.params import PreprocessConfig

REPO = Path(__file__).resolve().parents[1]
PREPROCESS = {"sequence_length": 4, "height": 16, "width": 16, "fps": 6.0, "clips_per_video": 2,
              "splits": {"train": 0.5, "val": 0.25, "test": 0.25}, "split_salt": "r"}  # fmt: skip


def entry() -> reuse.Entry:
    clips = (
        EncodedClip(0, (b"\xff\xd8one", b"two"), (0, 3), (0.0, 0.1 + 0.2)),
        EncodedClip(1, (b"three", b""), (5, 9), (1 / 3, 1e-17)),
    )
    return reuse.Entry(clips, frames_kept=4, shorter_than_stated=True)


def test_an_entry_round_trips_exactly():
    assert reuse.unpack(reuse.pack(entry())) == entry()  # floats included, bit for bit


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[:-1], lambda b: b[: len(b) // 2], lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:], lambda b: b"",
     lambda b: b"x" * len(b)],
    ids=["last byte cut", "half", "one bit", "empty", "overwritten"],
)  # fmt: skip
def test_a_damaged_entry_is_refused(damage):
    with pytest.raises(reuse.CorruptEntry):
        reuse.unpack(damage(reuse.pack(entry())))


def test_a_cache_ignores_a_damaged_entry_and_writes_whole_files(tmp_path, caplog):
    cache = reuse.Cache(str(tmp_path / "c"), "f" * 16)
    assert cache.read("ab" * 32) is None
    cache.write("ab" * 32, entry())
    path = Path(cache.entry_path("ab" * 32))
    assert cache.read("ab" * 32) == entry() and os.listdir(path.parent) == [path.name]  # no temporary left
    path.write_bytes(path.read_bytes()[:-5])
    assert cache.read("ab" * 32) is None
    assert "is ignored and decoded again: checksum mismatch" in caplog.text


def test_the_fingerprint_follows_what_shapes_clips_only():
    base = reuse.fingerprint(PreprocessConfig())
    assert base == reuse.fingerprint(PreprocessConfig())
    for change in ({"height": 32}, {"fps": 4.0}, {"jpeg_quality": 80}, {"sampling": "sliding"}, {"resize": "letterbox"}):
        assert reuse.fingerprint(PreprocessConfig(**change)) != base, change
    for same in ({"splits": {"test": 1.0}}, {"split_salt": "x"}, {"shard_size_mb": 1.0}, {"compression": "gzip"},
                 {"decode": "seek"}, {"decode_threads": 2}, {"max_error_fraction": 0.5}):  # fmt: skip
        assert reuse.fingerprint(PreprocessConfig(**same)) == base, same


def test_the_memo_gives_a_hash_only_for_an_unchanged_stat():
    items = [VideoItem("a.mp4", "a.mp4", "x", "a", stat="10:5:1"), VideoItem("b.mp4", "b.mp4", "x", "b", stat="10:6:2"),
             VideoItem("c.mp4", "c.mp4", "x", "c")]  # fmt: skip
    memo = {"a.mp4": ("10:5:1", "ha"), "b.mp4": ("10:5:2", "hb"), "c.mp4": ("", "hc")}
    assert [i.content for i in reuse.known(items, memo)] == ["ha", "", ""]
    hashed = [{"path": "b.mp4", "stat": "10:6:2", "sha256": "hb2", "settled": True},
              {"path": "c.mp4", "stat": "", "sha256": "hc", "settled": True}]  # fmt: skip
    assert sorted(reuse.memo_rows(reuse.known(items, memo), hashed)) == [("a.mp4", "10:5:1", "ha"), ("b.mp4", "10:6:2", "hb2")]
    unsettled = [dict(hashed[0], settled=False)]
    assert reuse.memo_rows(reuse.known(items, memo), unsettled) == [("a.mp4", "10:5:1", "ha")]
    assert reuse.settled(100.0, 102.0) and not reuse.settled(100.0, 101.0) and not reuse.settled(0.0, 500.0)


# --------------------------------------------------------------------------- the job


def write(path: Path, seed: int, dx: int = 1, dy: int = 0, seconds: float = 1.0) -> None:
    write_tiny_video(path, seconds=seconds, size=(24, 24), dx=dx, dy=dy, seed=seed)
    past = time.time() - 60
    os.utime(path, (past, past))  # settled: its hash may be remembered


def job(raw: Path, out: Path, params: Path, *flags: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "--input", str(raw), "--output", str(out), "--params", str(params),
         "--direct_running_mode=in_memory", *flags],
        cwd=out.parent, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    spec = json.loads((out / records.DATASET_JSON).read_text())
    return {**spec["decode"], "line": done.stdout.strip(), "spec": spec}


def same_records(a: Path, b: Path) -> None:
    """The shards and errors.jsonl byte for byte, dataset.json but for what decoding cost."""
    names = sorted(n for n in os.listdir(a) if n != records.DATASET_JSON)
    assert names == sorted(n for n in os.listdir(b) if n != records.DATASET_JSON)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    spec_a, spec_b = (json.loads((x / records.DATASET_JSON).read_text()) for x in (a, b))
    assert {**spec_a, "decode": None} == {**spec_b, "decode": None}


@pytest.fixture
def dataset(tmp_path):
    raw = tmp_path / "raw"
    for c, (name, dx, dy) in enumerate([("left", -1, 0), ("right", 1, 0), ("up", 0, -1)]):
        for g in range(3):
            write(raw / name / f"v_{name}_g{g:02d}_c01.mp4", seed=10 * c + g, dx=dx, dy=dy)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": PREPROCESS}))
    return raw, params


def test_a_rerun_decodes_only_the_news_and_writes_the_records_of_a_fresh_run(dataset, tmp_path):
    raw, params = dataset
    out = tmp_path / "out"
    first = job(raw, out, params)
    assert first["videos_reused"] == 0 and first["videos_hashed"] == 9 and first["frames_decoded"] > 0
    assert (tmp_path / "out.cache" / reuse.HASHES).exists()

    again = job(raw, out, params)  # nothing new: nothing decoded, no file read
    assert again["videos_reused"] == 9 and again["frames_decoded"] == 0 and again["videos_hashed"] == 0
    assert "reused the clips of 9 unchanged videos; decoded 0 frames" in again["line"]

    write(raw / "down" / "v_down_g00_c01.mp4", seed=90, dy=1)  # a new class: every label after it shifts
    write(raw / "up" / "v_up_g05_c01.mp4", seed=91, dy=-1)  # a new video
    write(raw / "left" / "v_left_g01_c01.mp4", seed=92, dx=-1, seconds=1.5)  # changed content, same name
    os.rename(raw / "right" / "v_right_g02_c01.mp4", raw / "right" / "v_right_g07_c01.mp4")  # moved: same content
    os.unlink(raw / "up" / "v_up_g00_c01.mp4")  # removed
    grown = job(raw, out, params)
    assert grown["videos_reused"] == 7 and grown["videos_hashed"] == 4  # 3 new or changed + the moved one
    fresh = job(raw, tmp_path / "fresh", params, "--no-cache")
    assert not (tmp_path / "fresh.cache").exists()
    assert 0 < grown["frames_decoded"] <= fresh["frames_decoded"] / 2 and grown["frames_kept"] == fresh["frames_kept"]
    same_records(out, tmp_path / "fresh")
    assert grown["spec"]["classes"] == ["down", "left", "right", "up"]
    entries = list((tmp_path / "out.cache" / "clips").rglob("*.clips"))
    assert len(entries) == 10  # the removed video's and the changed video's old entries are gone


def test_a_changed_clip_parameter_decodes_everything_and_others_reuse(dataset, tmp_path):
    raw, params = dataset
    out = tmp_path / "out"
    job(raw, out, params)
    params.write_text(yaml.safe_dump({"preprocess": {**PREPROCESS, "splits": {"test": 1.0}, "shard_size_mb": 0.001}}))
    split_only = job(raw, out, params)
    assert split_only["videos_reused"] == 9 and split_only["spec"]["splits"]["test"]["videos"] == 9
    params.write_text(yaml.safe_dump({"preprocess": {**PREPROCESS, "height": 20}}))
    taller = job(raw, out, params)
    assert taller["videos_reused"] == 0 and taller["videos_hashed"] == 0  # the hashes still hold
    params.write_text(yaml.safe_dump({"preprocess": PREPROCESS}))
    back = job(raw, out, params)  # the previous parameter set is kept too
    assert back["videos_reused"] == 9
    assert len(json.loads((tmp_path / "out.cache" / reuse.PARAMS).read_text())) == reuse.PARAM_SETS


def test_a_damaged_or_half_written_entry_is_decoded_again(dataset, tmp_path):
    raw, params = dataset
    out = tmp_path / "out"
    job(raw, out, params)
    entries = sorted((tmp_path / "out.cache" / "clips").rglob("*.clips"))
    entries[0].write_bytes(entries[0].read_bytes()[:100])  # what a kill -9 mid-write would leave without the rename
    entries[1].write_bytes(b"\0" * entries[1].stat().st_size)
    (entries[2].parent / (entries[2].name + ".tmp-0123abcd")).write_bytes(b"half")  # a killed writer's temporary
    again = job(raw, out, params)
    assert again["videos_reused"] == 7 and again["frames_decoded"] > 0
    fresh = job(raw, tmp_path / "fresh", params, "--no-cache")
    same_records(out, tmp_path / "fresh")
    assert reuse.unpack(entries[0].read_bytes()) and reuse.unpack(entries[1].read_bytes())  # rewritten whole
    assert not list((tmp_path / "out.cache").rglob("*.tmp-*"))  # swept by the housekeeping
    assert fresh["videos_reused"] == 0


def test_a_cache_inside_the_output_or_the_input_is_refused(dataset, tmp_path):
    raw, params = dataset
    for cache, what in ((tmp_path / "out" / "cache", "--output"), (raw / "cache", "--input")):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "--input", str(raw), "--output", str(tmp_path / "out"),
             "--params", str(params), "--cache", str(cache)],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 2
        assert f"error: --cache {cache} lies inside {what}" in done.stderr.splitlines()[-1]


def test_an_explicit_cache_folder_serves_another_output(dataset, tmp_path):
    raw, params = dataset
    job(raw, tmp_path / "a", params, "--cache", str(tmp_path / "shared"))
    other = job(raw, tmp_path / "b", params, "--cache", str(tmp_path / "shared"))
    assert other["videos_reused"] == 9 and not (tmp_path / "a.cache").exists()
    same_records(tmp_path / "a", tmp_path / "b")


def test_items_keep_their_fields_through_known():
    item = VideoItem("p", "p", "x", "g", split="val", stat="1:2:3", modified=5.0)
    (got,) = reuse.known([item], {"p": ("1:2:3", "h")})
    assert got == dataclasses.replace(item, content="h")
