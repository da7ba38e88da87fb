"""Tests of pipeline.keyframes: the packet index and the decode plan (pure tables, plus one real scan)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import av
import pytest
from videos import H264_SMALL_GOP, moving_square_frames

from pipeline import keyframes
from pipeline.writer import write_video


@dataclass
class FakePacket:
    pts: int | None
    is_keyframe: bool = False
    is_discard: bool = False
    size: int = 100
    duration: int = 0


def index_of(pts: list[int], keys: list[int]) -> keyframes.PacketIndex:
    return keyframes.PacketIndex(array("q", pts), array("q", keys), pts[-1] + 1, True, len(pts))


def test_scan_keeps_shown_frames_sorted_and_every_keyframe():
    packets = [  # decode order of an IBBP stream with an edit list: the first GOP starts before 0
        FakePacket(-3, is_keyframe=True, is_discard=True), FakePacket(0), FakePacket(-2, is_discard=True),
        FakePacket(-1, is_discard=True), FakePacket(3, is_keyframe=True), FakePacket(1), FakePacket(2),
        FakePacket(None, size=0),  # the flush packet at the end
    ]  # fmt: skip
    counts = []
    index = keyframes.scan(lambda: iter(packets), default_duration=1, check=counts.append, check_every=1)
    assert list(index.pts) == [0, 1, 2, 3] and list(index.keyframes) == [-3, 3]
    assert index.end_pts == 4 and index.seekable and len(index) == 4
    assert counts == [1, 2, 3, 4, 5, 6, 7, 7]  # the limits see every non-empty packet, and the total
    assert index.duration_s(0, 0.5) == 2.0


@pytest.mark.parametrize(
    "packets, why",
    [
        ([FakePacket(0, True), FakePacket(None)], "a packet without pts"),
        ([FakePacket(0, True), FakePacket(1), FakePacket(1)], "two frames at one time"),
    ],
)
def test_an_index_that_cannot_find_frames_by_time_is_not_seekable(packets, why):
    assert not keyframes.scan(lambda: iter(packets), 1).seekable, why


def test_empty_packets_show_no_frame():
    packets = [FakePacket(0, True), FakePacket(1, size=0), FakePacket(2)]  # AVI: a dropped frame
    assert list(keyframes.scan(lambda: iter(packets), 1).pts) == [0, 2]


# thresholds in pts -> serving frame numbers (pts 10, 20, 30, 40)
@pytest.mark.parametrize(
    "thresholds, frames",
    [
        ([5.0, 10.0, 19.9], [0, 0, 0]),  # before the first frame: the first frame
        ([20.0, 29.0, 30.5], [1, 1, 2]),  # the last frame at or before the threshold
        ([45.0, 1e9], [3, 3]),  # after the last frame: the last frame
    ],
)
def test_serving_frames(thresholds, frames):
    assert keyframes.serving_frames([10, 20, 30, 40], thresholds) == frames


# 24 frames at pts 0..23; keyframes every 6 -> (needed frames) -> [(key_pts, first, frames)]
KEYS_6 = [0, 6, 12, 18]
PLAN_TABLE = [
    ([0, 1, 2], [(0, 0, (0, 1, 2))]),
    ([20, 21], [(18, 18, (20, 21))]),  # one seek, forward
    ([1, 13, 22], [(0, 0, (1,)), (12, 12, (13,)), (18, 18, (22,))]),
    ([4, 7, 9], [(0, 0, (4, 7, 9))]),  # 7's keyframe (6) is close: decoding on from 4 costs 3, a seek 4
    ([2, 3, 3, 2], [(0, 0, (2, 3))]),  # sorted, each frame once
    ([5, 12], [(0, 0, (5,)), (12, 12, (12,))]),  # 5 -> 12 is 7 frames on, a seek costs 1 + 2
    ([10, 13], [(6, 6, (10, 13))]),  # 13's keyframe is 12: decoding on from 10 costs 3, a seek 4
]


@pytest.mark.parametrize("needed, expected", PLAN_TABLE)
def test_plan_ranges(needed, expected):
    ranges = keyframes.plan_ranges(index_of(list(range(24)), KEYS_6), needed)
    assert [(r.key_pts, r.first, r.frames) for r in ranges] == expected
    starts = [r.key_pts for r in ranges]
    assert starts == sorted(starts) and all(a.last < b.first for a, b in zip(ranges, ranges[1:]))  # never backwards


def test_open_gop_leading_frames_take_the_keyframe_before_them():
    # presentation order 0..11; keyframe at pts 6 of an open GOP whose leading B-frames are 4 and 5
    index = index_of(list(range(12)), [0, 6])
    (first,) = keyframes.plan_ranges(index, [5])
    assert (first.key_pts, first.first) == (0, 0)  # 5 shows before the keyframe at 6: decode from 0


def test_a_stream_that_does_not_start_with_a_keyframe_is_decoded_from_its_first_frame():
    (only,) = keyframes.plan_ranges(index_of([10, 11, 12, 13], [12]), [1])
    assert (only.key_pts, only.first, only.frames) == (10, 0, (1,))


@pytest.mark.parametrize(
    "mode, needed, chosen",
    [
        ("auto", [100, 101, 102], "seek"),  # one GOP near the end of 120 frames
        ("auto", [1, 50, 99], "sequential"),  # all in the first GOP: seeking saves nothing
        ("sequential", [100, 101, 102], "sequential"),
        ("seek", [1, 50, 99], "seek"),
    ],
)
def test_choose(mode, needed, chosen):
    index = index_of(list(range(120)), [0, 100])
    plan = keyframes.choose(mode, index, needed)
    assert plan.mode == chosen
    assert plan.sequential_frames == min(120, max(needed) + 2)
    assert plan.seek_frames == sum(r.cost for r in plan.ranges) + keyframes.SEEK_COST_FRAMES * len(plan.ranges)


def test_without_a_usable_index_only_sequential_is_possible():
    assert keyframes.choose("seek", None, [3]).mode == "sequential"
    unusable = keyframes.PacketIndex(array("q", [0, 1]), array("q", [0]), 2, False, 2)
    assert keyframes.choose("seek", unusable, [1]).mode == "sequential"


def test_scan_of_a_real_file_ignores_the_container_frame_count(tmp_path):
    path = tmp_path / "b.mp4"
    write_video(str(path), moving_square_frames(30), 24, "mp4", codec_options=H264_SMALL_GOP)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        index = keyframes.scan(lambda: container.demux(stream), 512)
    assert len(index) == 30 and list(index.pts) == sorted(index.pts)
    assert len(index.keyframes) == 5  # a keyframe every 6 frames
    assert index.duration_s(0, float(stream.time_base)) == pytest.approx(30 / 24)
