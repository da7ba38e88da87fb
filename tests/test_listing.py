"""Tests of pipeline.listing: the listed videos' sizes and MD5s, remembered by stat, the same on every machine."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

from pipeline import listing
from pipeline.sources import InputError


@pytest.fixture
def manifest(tmp_path):
    """``mine/manifest.csv`` listing two videos beside it and one that is missing (the bytes need not decode)."""
    folder = tmp_path / "mine"
    (folder / "clips").mkdir(parents=True)
    (folder / "clips" / "b.mp4").write_bytes(b"second video" * 10)
    (folder / "clips" / "a.mp4").write_bytes(b"first video" * 20)
    (folder / "manifest.csv").write_text("path,label\nclips/b.mp4,fight\nclips/a.mp4,calm\nclips/gone.mp4,calm\n")
    return folder / "manifest.csv"


def test_a_manifest_lists_each_video_by_size_and_md5_sorted_and_the_missing_ones(manifest):
    result = listing.listing(str(manifest))
    first = (manifest.parent / "clips" / "a.mp4").read_bytes()
    assert result["input"] == str(manifest)
    assert result["videos"] == [
        {"video": "clips/a.mp4", "size": len(first), "md5": hashlib.md5(first).hexdigest()},
        {"video": "clips/b.mp4", "size": 120, "md5": hashlib.md5(b"second video" * 10).hexdigest()},
    ]
    assert result["errors"] == ["clips/gone.mp4"]


def test_the_listing_names_no_machine_a_moved_copy_lists_the_same_videos(manifest, tmp_path):
    moved = shutil.copytree(manifest.parent, tmp_path / "elsewhere" / "mine")
    here, there = listing.listing(str(manifest)), listing.listing(str(moved / "manifest.csv"))
    assert here["videos"] == there["videos"] and here["errors"] == there["errors"]
    assert str(tmp_path) not in json.dumps(here["videos"]) + json.dumps(here["errors"])


def test_class_folders_are_listed_too(tmp_path):
    (tmp_path / "raw" / "run").mkdir(parents=True)
    (tmp_path / "raw" / "run" / "v1.mp4").write_bytes(b"x" * 7)
    result = listing.listing(str(tmp_path / "raw"))
    assert result["videos"] == [{"video": "run/v1.mp4", "size": 7, "md5": hashlib.md5(b"x" * 7).hexdigest()}]


def test_an_unusable_input_is_the_sources_error(tmp_path):
    with pytest.raises(InputError, match="manifest .* does not exist"):
        listing.listing(str(tmp_path / "none.csv"))


def test_md5s_are_remembered_until_size_mtime_or_inode_change(manifest, monkeypatch):
    real, read = listing.file_md5, []
    monkeypatch.setattr(listing, "file_md5", lambda path: read.append(os.path.basename(path)) or real(path))
    memo: dict = {}
    first = listing.listing(str(manifest), memo)
    assert sorted(read) == ["a.mp4", "b.mp4"] and len(memo) == 2
    read.clear()
    assert listing.listing(str(manifest), memo) == first and read == []  # nothing read again

    video = manifest.parent / "clips" / "a.mp4"
    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes
    assert listing.listing(str(manifest), memo) == first and read == ["a.mp4"]  # read again, listing unchanged
    read.clear()

    video.write_bytes(b"another take" * 20)  # same size, new bytes
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2 * 10**9))
    changed = listing.listing(str(manifest), memo)
    assert read == ["a.mp4"] and changed["videos"][0]["md5"] == hashlib.md5(b"another take" * 20).hexdigest()
    assert changed["videos"][1] == first["videos"][1]


def test_main_writes_the_listing_and_the_memo_and_an_unreadable_memo_is_only_a_cache(manifest, tmp_path, capsys):
    out, memo = tmp_path / "data" / "listing.json", tmp_path / "tmp" / "memo.json"
    argv = ["--input", str(manifest), "--output", str(out), "--memo", str(memo)]
    assert listing.main(argv) == 0
    written = out.read_bytes()
    assert json.loads(written) == listing.listing(str(manifest))
    assert set(json.loads(memo.read_text())) == {str(manifest.parent / "clips" / n) for n in ("a.mp4", "b.mp4")}
    printed = capsys.readouterr().out
    assert printed.startswith(f"listing: 2 videos (0.0 MiB) in {manifest}, 1 unusable") and str(out) in printed
    memo.write_text("{not json")
    assert listing.main(argv) == 0 and out.read_bytes() == written
    (manifest.parent / "clips" / "b.mp4").unlink()
    assert listing.main(argv) == 0
    assert set(json.loads(memo.read_text())) == {str(manifest.parent / "clips" / "a.mp4")}  # the gone file is forgotten
    assert json.loads(out.read_text())["errors"] == ["clips/b.mp4", "clips/gone.mp4"]
