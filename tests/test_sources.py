"""Tests for pipeline.sources: listing class folders and manifests, groups, deterministic splits."""

import collections

import pytest

from pipeline.sources import InputError, assign_split, group_of, list_videos

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_class_folders_sorted_labels_and_relative_ids(tmp_path):
    for rel in ["walk/v_Walk_g01_c01.mp4", "walk/v_Walk_g01_c02.avi", "run/a.mp4", "jump/b.webm", "jump/.DS_Store"]:
        _touch(tmp_path / rel)
    listing = list_videos(str(tmp_path), FRACTIONS)
    assert listing.classes == ("jump", "run", "walk")
    ids = [item.video_id for item in listing.items]
    assert ids == sorted(ids) and ".DS_Store" not in " ".join(ids)
    assert {i.video_id: i.label for i in listing.items}["run/a.mp4"] == "run"
    assert all(item.split in FRACTIONS for item in listing.items)
    assert listing.errors == ()


def test_file_outside_class_folder_is_an_error_not_lost(tmp_path):
    _touch(tmp_path / "a" / "x.mp4")
    _touch(tmp_path / "loose.mp4")
    _touch(tmp_path / "a" / "deep" / "y.mp4")
    listing = list_videos(str(tmp_path), FRACTIONS)
    assert [i.video_id for i in listing.items] == ["a/x.mp4"]
    assert sorted(e["path"] for e in listing.errors) == ["a/deep/y.mp4", "loose.mp4"]
    assert all(e["stage"] == "list" for e in listing.errors)


def test_empty_class_folder_is_left_out_with_a_warning(tmp_path):
    _touch(tmp_path / "a" / "x.mp4")
    (tmp_path / "empty").mkdir()
    listing = list_videos(str(tmp_path), FRACTIONS)
    assert listing.classes == ("a",)
    assert any("'empty'" in w for w in listing.warnings)


def test_missing_input_and_empty_root(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        list_videos(str(tmp_path / "nope"), FRACTIONS)
    with pytest.raises(InputError, match="does not exist"):
        list_videos(str(tmp_path / "nope.csv"), FRACTIONS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no videos found"):
        list_videos(str(tmp_path / "empty"), FRACTIONS)


def test_manifest_rows_groups_and_missing_files(tmp_path):
    _touch(tmp_path / "clips" / "1.mp4")
    _touch(tmp_path / "clips" / "2.mp4")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label,group\nclips/1.mp4,cat,alice\nclips/2.mp4,dog,alice\nclips/3.mp4,dog,bob\n")
    listing = list_videos(str(manifest), FRACTIONS)
    assert listing.classes == ("cat", "dog")
    assert [i.video_id for i in listing.items] == ["clips/1.mp4", "clips/2.mp4"]
    assert listing.items[0].path == str(tmp_path / "clips" / "1.mp4")
    assert {i.group for i in listing.items} == {"alice"}
    assert len({i.split for i in listing.items}) == 1  # one group, one split
    (error,) = listing.errors
    assert error["path"] == "clips/3.mp4" and "not found" in error["reason"] and "line 4" in error["reason"]


def test_manifest_without_group_column(tmp_path):
    _touch(tmp_path / "1.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n1.mp4,cat\n")
    (item,) = list_videos(str(manifest), FRACTIONS).items
    assert item.group == "1.mp4"


def test_manifest_unknown_column_stops_before_work(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,speaker\n1.mp4,cat,x\n")
    with pytest.raises(InputError, match=r"unknown: \['speaker'\]"):
        list_videos(str(manifest), FRACTIONS)


def test_group_of_ucf101_names():
    assert group_of("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup") == "ApplyEyeMakeup/g08"
    assert group_of("x/clip.mp4", "x") == "x/clip.mp4"


def test_assign_split_is_deterministic_and_follows_fractions():
    groups = [f"g{i}" for i in range(4000)]
    first = [assign_split(g, FRACTIONS) for g in groups]
    assert first == [assign_split(g, FRACTIONS) for g in groups]
    counts = collections.Counter(first)
    for split, fraction in FRACTIONS.items():
        assert abs(counts[split] / len(groups) - fraction) < 0.03
    assert first != [assign_split(g, FRACTIONS, salt="other") for g in groups]
    assert {assign_split(g, {"train": 1.0}) for g in groups[:50]} == {"train"}


def test_no_group_in_two_splits(tmp_path):
    for c in range(3):
        for g in range(6):
            for k in range(3):
                _touch(tmp_path / f"c{c}" / f"v_c{c}_g{g:02d}_c{k:02d}.mp4")
    listing = list_videos(str(tmp_path), FRACTIONS)
    splits_of_group = collections.defaultdict(set)
    for item in listing.items:
        splits_of_group[item.group].add(item.split)
    assert len(splits_of_group) == 18
    assert all(len(s) == 1 for s in splits_of_group.values())


def test_manifest_split_column_wins_over_the_draw_and_empty_cells_are_drawn(tmp_path):
    for name in ("1", "2", "3", "4"):
        _touch(tmp_path / f"{name}.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,group,split\n1.mp4,cat,g,test\n2.mp4,cat,g,val\n3.mp4,dog,h,\n4.mp4,dog,h,train\n")
    for fractions in (FRACTIONS, {"train": 1.0}):  # the column wins even over a split with no fraction
        listing = list_videos(str(manifest), fractions)
        assert [i.split for i in listing.items] == ["test", "val", assign_split("h", fractions), "train"]


def test_manifest_split_outside_train_val_test_stops_before_work(tmp_path):
    _touch(tmp_path / "1.mp4")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n1.mp4,cat,dev\n")
    with pytest.raises(InputError, match=r"m.csv line 2: split 'dev' is not one of train, val, test"):
        list_videos(str(manifest), FRACTIONS)
