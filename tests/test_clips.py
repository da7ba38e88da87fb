"""Tests of pipeline.clips: a table of (duration, fps, T, sampling, clips, stride, short_video) -> clips."""

from __future__ import annotations

import math

import pytest

from pipeline.clips import ClipPlan, SamplingError, plan_clips, plan_from_config, resampled_count, uniform_starts
from vidseq.params import PreprocessConfig

# (duration_s, fps, T, sampling, clips_per_video, clip_stride, short_video) -> first-frame indices at `fps`
TABLE = [
    pytest.param(10.0, 8, 8, "uniform", 3, 4, "pad", [0, 36, 72], id="uniform-3-covers-whole-video"),
    pytest.param(10.0, 8, 8, "uniform", 4, 4, "pad", [0, 24, 48, 72], id="uniform-4"),
    pytest.param(10.0, 8, 8, "uniform", 1, 4, "pad", [36], id="uniform-1-centred"),
    pytest.param(1.125, 8, 8, "uniform", 1, 4, "pad", [0], id="uniform-1-centred-odd-span-floors"),
    pytest.param(1.0, 8, 8, "uniform", 3, 4, "pad", [0], id="exactly-T-frames-one-clip"),
    pytest.param(1.125, 8, 8, "uniform", 3, 4, "pad", [0, 1], id="T+1-frames-two-clips-no-duplicates"),
    pytest.param(1.25, 8, 8, "uniform", 5, 4, "pad", [0, 1, 2], id="fewer-positions-than-clips"),
    pytest.param(1.0, 30, 8, "uniform", 3, 4, "pad", [0, 11, 22], id="fps-above-source-fps"),
    pytest.param(2.0, 2.5, 4, "uniform", 2, 1, "pad", [0, 1], id="fractional-fps"),
    pytest.param(1.01, 8, 8, "uniform", 2, 1, "pad", [0, 1], id="partial-last-frame-counts"),
    pytest.param(1.0000001, 8, 8, "uniform", 2, 1, "pad", [0], id="time-base-rounding-adds-no-frame"),
    pytest.param(2.0, 8, 8, "sliding", 3, 4, "pad", [0, 4, 8], id="sliding-stride-4"),
    pytest.param(2.0, 8, 8, "sliding", 3, 8, "pad", [0, 8], id="sliding-stride-T"),
    pytest.param(1.5, 8, 8, "sliding", 3, 5, "pad", [0], id="sliding-stride-beyond-span"),
    pytest.param(1.0, 8, 8, "sliding", 3, 1, "pad", [0], id="sliding-exactly-T"),
    pytest.param(600.0, 8, 8, "sliding", 3, 4, "pad", list(range(0, 4793, 4)), id="sliding-10-minutes"),
]


@pytest.mark.parametrize("duration, fps, t, sampling, clips, stride, short, starts", TABLE)
def test_clip_table(duration, fps, t, sampling, clips, stride, short, starts):
    plans = plan_clips(
        duration,
        fps=fps,
        sequence_length=t,
        sampling=sampling,
        clips_per_video=clips,
        clip_stride=stride,
        short_video=short,
    )
    assert [p.index for p in plans] == list(range(len(starts)))
    assert [round(p.times[0] * fps) for p in plans] == starts
    for plan in plans:  # T consecutive target times k / fps, all inside the video
        first = round(plan.times[0] * fps)
        assert plan.times == tuple((first + i) / fps for i in range(t))
        assert plan.times[-1] < duration


# (duration_s, fps, T, short_video) -> target frame indices of the single clip
SHORT = [
    pytest.param(0.875, 8, 8, "pad", [0, 1, 2, 3, 4, 5, 6, 6], id="N=T-1-pad"),
    pytest.param(0.875, 8, 8, "loop", [0, 1, 2, 3, 4, 5, 6, 0], id="N=T-1-loop"),
    pytest.param(0.4, 8, 8, "pad", [0, 1, 2, 3, 3, 3, 3, 3], id="pad-repeats-last"),
    pytest.param(0.4, 8, 8, "loop", [0, 1, 2, 3, 0, 1, 2, 3], id="loop-wraps"),
    pytest.param(0.05, 8, 4, "pad", [0, 0, 0, 0], id="one-frame-pad"),
    pytest.param(0.05, 8, 4, "loop", [0, 0, 0, 0], id="one-frame-loop"),
]


@pytest.mark.parametrize("duration, fps, t, short, indices", SHORT)
def test_short_video(duration, fps, t, short, indices):
    for sampling in ("uniform", "sliding"):
        plans = plan_clips(
            duration, fps=fps, sequence_length=t, sampling=sampling, clips_per_video=3, short_video=short
        )
        assert plans == [ClipPlan(0, tuple(k / fps for k in indices))]


def test_short_video_skip_names_the_numbers():
    with pytest.raises(SamplingError) as info:
        plan_clips(0.4, fps=8, sequence_length=8, short_video="skip")
    assert str(info.value) == (
        "video is 0.40 s (4 frames at 8 fps), shorter than one clip of 8 frames; short_video=skip"
    )


@pytest.mark.parametrize("duration", [None, 0.0, -1.0, math.nan, math.inf])
def test_unknown_or_zero_duration_is_an_error(duration):
    with pytest.raises(SamplingError, match="duration"):
        plan_clips(duration, fps=8, sequence_length=8)


def test_duration_too_short_for_one_frame():
    with pytest.raises(SamplingError, match="too short for one frame"):
        plan_clips(1e-9, fps=8, sequence_length=8)


@pytest.mark.parametrize(
    "kwargs",
    [{"sampling": "random"}, {"short_video": "drop"}, {"fps": 0}, {"sequence_length": 0}, {"clip_stride": 0}],
)
def test_bad_parameters(kwargs):
    with pytest.raises(ValueError):
        plan_clips(1.0, **{"fps": 8, "sequence_length": 4, **kwargs})


@pytest.mark.parametrize(
    "duration, fps, n",
    [(1.0, 8, 8), (1.01, 8, 9), (0.999, 8, 8), (0.1, 8, 1), (8.0, 29.97, 240), (1e-9, 8, 0)],
)
def test_resampled_count(duration, fps, n):
    assert resampled_count(duration, fps) == n


@pytest.mark.parametrize("max_start, count", [(0, 1), (0, 3), (5, 1), (5, 2), (5, 6), (5, 9), (72, 3), (100, 7)])
def test_uniform_starts_are_distinct_sorted_and_reach_both_ends(max_start, count):
    starts = uniform_starts(max_start, count)
    assert starts == sorted(set(starts))
    assert len(starts) == min(count, max_start + 1)
    assert all(0 <= s <= max_start for s in starts)
    if count > 1:
        assert starts[0] == 0 and starts[-1] == max_start


def test_plan_from_config_reads_the_preprocess_section():
    cfg = PreprocessConfig(sequence_length=4, fps=4.0, sampling="sliding", clip_stride=2)
    assert plan_from_config(2.0, cfg) == plan_clips(2.0, fps=4.0, sequence_length=4, sampling="sliding", clip_stride=2)
