"""Tests of pipeline.synth: a demo dataset whose classes differ only in motion."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import re

import av
import numpy as np
import pytest

from pipeline import synth

NAME_RE = re.compile(r"^v_(?P<cls>[A-Za-z]+)_g(?P<group>\d{2})_c(?P<clip>\d{2})\.(?P<ext>mp4|avi|webm)$")
CLIP_SECONDS = 7 / 8  # the model's clip: 8 frames at 8 fps


def decoded_digest(path: str) -> tuple[int, tuple[int, int], str]:
    """(frames, (H, W), sha1 of all decoded RGB frames) of a video file."""
    digest = hashlib.sha1()
    count = 0
    with av.open(path) as container:
        for frame in container.decode(video=0):
            array = frame.to_ndarray(format="rgb24")
            digest.update(array.tobytes())
            count += 1
    return count, array.shape[:2], digest.hexdigest()


def object_stats(spec: synth.VideoSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per rendered frame: centroid (x, y) in pixels and area of where the object is drawn."""
    frames = synth.render_video(spec).astype(np.int16)
    background = synth.render_background(spec.scene, spec.width, spec.height)
    mask = np.abs(frames - background).sum(axis=-1) > 60
    ys, xs = np.mgrid[: spec.height, : spec.width]
    area = mask.sum(axis=(1, 2))
    centroid = np.stack([(mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area], axis=1)
    return centroid, area


def test_classes_are_six_sorted_names():
    assert synth.CLASSES == tuple(sorted(synth.CLASSES))
    assert len(synth.CLASSES) == 6 and set(synth.DIRECTIONS) < set(synth.CLASSES)


@pytest.mark.parametrize("videos, expected", [(1, [1]), (4, [2, 2]), (5, [3, 2]), (45, [3] + [2] * 21), (80, [4] * 5 + [3] * 20)])
def test_group_sizes(videos, expected):
    assert synth.group_sizes(videos) == expected


def test_plan_is_deterministic_and_seeded():
    assert synth.plan_dataset(3, seed=7) == synth.plan_dataset(3, seed=7)
    assert synth.plan_dataset(3, seed=7) != synth.plan_dataset(3, seed=8)
    # more videos per class do not change the videos both plans share (per-video seeds)
    small = {s.relpath: s for s in synth.plan_dataset(2, seed=1)}
    large = {s.relpath: s for s in synth.plan_dataset(3, seed=1)}
    assert small.items() <= large.items()


def test_default_plan_names_groups_and_variety():
    specs = synth.plan_dataset()
    assert len(specs) == 6 * synth.DEFAULT_VIDEOS_PER_CLASS
    assert len({s.relpath for s in specs}) == len(specs)
    for spec in specs:
        match = NAME_RE.match(spec.filename)
        assert match and match["cls"] == spec.class_name and spec.relpath.startswith(spec.class_name + "/")
    scenes: dict[int, set] = {}
    for spec in specs:  # a group shares its scene (background, object look) across all classes
        scenes.setdefault(spec.group, set()).add(spec.scene)
    assert all(len(v) == 1 for v in scenes.values()) and len(scenes) > 10
    assert {s.ext for s in specs} == {"mp4", "avi", "webm"}
    assert {30000 / 1001, 15.0, 30.0} <= {s.fps for s in specs}
    assert any(s.height > s.width for s in specs) and any(s.width % 2 or s.height % 2 for s in specs)
    assert min(s.seconds for s in specs) < 1.5 and max(s.seconds for s in specs) > 5
    assert {s.scene.shape for s in specs} == set(synth.SHAPES)
    assert {s.scene.texture for s in specs} == set(synth.TEXTURES)


def test_object_stays_in_the_crop_and_moves_visibly_within_a_clip():
    for spec in synth.plan_dataset(seed=3):
        centres, sizes = synth.object_track(spec)
        half = sizes[:, None] / 2
        assert (centres - half >= 0).all() and (centres + half <= 1).all(), spec
        assert sizes.min() >= synth.SIZE_RANGE[0] - 1e-9 and sizes.max() <= synth.SIZE_RANGE[1] + 1e-9
        if spec.class_name in synth.DIRECTIONS:  # >= 5.5 px per clip at 48x48
            assert math.hypot(*spec.velocity) * CLIP_SECONDS * 48 >= 5.5, spec
        else:  # >= 1.25x per clip
            assert max(spec.growth, 1 / spec.growth) ** CLIP_SECONDS >= 1.25, spec


@pytest.mark.parametrize("class_name", synth.CLASSES)
def test_rendered_motion_matches_the_class(class_name):
    specs = [s for s in synth.plan_dataset(4, seed=5, size=(64, 48), seconds=1.5) if s.class_name == class_name]
    for spec in specs:
        centroid, area = object_stats(spec)
        assert (area > 0).all()
        shift = centroid[-1] - centroid[0]
        if class_name in synth.DIRECTIONS:
            direction = np.array(synth.DIRECTIONS[class_name])
            assert shift @ direction > 0.9 * np.linalg.norm(shift) and np.linalg.norm(shift) > 4, (spec, shift)
        else:
            assert np.linalg.norm(shift) < 1.5, (spec, shift)
            grows = area[-1] > 1.3 * area[0]
            shrinks = area[0] > 1.3 * area[-1]
            assert (grows, shrinks) == ((True, False) if class_name == "ZoomIn" else (False, True)), spec


def test_render_is_pure_and_sized():
    spec = synth.plan_dataset(1, seed=2, size=(75, 99), seconds=1.0, fps=12.0)[0]
    frames = synth.render_video(spec)
    assert frames.shape == (12, 99, 75, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, synth.render_video(dataclasses.replace(spec)))


def test_write_dataset_writes_decodable_videos_and_replaces_a_previous_run(tmp_path):
    output = tmp_path / "raw"
    stale = output / "MoveLeft" / "v_MoveLeft_g09_c09.mp4"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (output / "README.txt").write_text("not ours")

    paths = synth.write_dataset(str(output), 2, seed=0, size=(32, 24), seconds=1.0)

    assert len(paths) == 12 and all(os.path.exists(p) for p in paths)
    assert not stale.exists() and (output / "README.txt").exists()
    assert sorted(os.listdir(output)) == sorted([*synth.CLASSES, "README.txt"])  # no staging left behind
    specs = {s.relpath: s for s in synth.plan_dataset(2, seed=0, size=(32, 24), seconds=1.0)}
    for path in paths:
        spec = specs[os.path.relpath(path, output)]
        count, shape, _ = decoded_digest(path)
        assert (count, shape) == (spec.num_frames, (24, 32))
        with av.open(path) as container:
            assert abs(float(container.streams.video[0].average_rate) - spec.fps) < 0.01


def test_same_seed_gives_the_same_frames(tmp_path):
    kwargs = dict(size=(32, 32), seconds=1.0)
    first = synth.write_dataset(str(tmp_path / "a"), 1, seed=4, **kwargs)
    second = synth.write_dataset(str(tmp_path / "b"), 1, seed=4, **kwargs)
    other = synth.write_dataset(str(tmp_path / "c"), 1, seed=5, **kwargs)

    assert [os.path.basename(p) for p in first] == [os.path.basename(p) for p in second]
    assert [decoded_digest(p) for p in first] == [decoded_digest(p) for p in second]
    assert [decoded_digest(p)[2] for p in first] != [decoded_digest(p)[2] for p in other]


def test_exts_override_and_bad_arguments(tmp_path):
    assert {s.ext for s in synth.plan_dataset(3, exts=["avi"])} == {"avi"}
    with pytest.raises(ValueError, match="unknown video extension"):
        synth.plan_dataset(1, exts=["gif"])
    with pytest.raises(ValueError, match="videos_per_class"):
        synth.plan_dataset(0)


def test_main_writes_and_prints_one_summary_line(tmp_path, capsys):
    assert synth.main(["--output", str(tmp_path), "--videos-per-class", "1", "--seed", "3", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip()
    assert "\n" not in out and out.startswith("synth: 6 videos (6 classes x 1, seed 3)")
    assert sorted(os.listdir(tmp_path)) == sorted(synth.CLASSES)
