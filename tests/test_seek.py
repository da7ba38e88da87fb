"""The decode modes give the same records: seek and auto against sequential on files that make seeking hard."""

from __future__ import annotations

import dataclasses
import io

import pytest
from videos import write_seek_cases

from pipeline import keyframes, records, video
from vidseq.params import PreprocessConfig

CONFIGS = {
    "uniform": PreprocessConfig(sequence_length=4, height=16, width=16, fps=8.0, clips_per_video=3),
    "sliding_upsampled": PreprocessConfig(sequence_length=6, height=12, width=20, fps=30.0, sampling="sliding",
                                          clip_stride=25, resize="letterbox", frame_encoding="png"),
    "one_long_clip": PreprocessConfig(sequence_length=10, height=16, width=16, fps=4.0, clips_per_video=1),
    "loop_short": PreprocessConfig(sequence_length=40, height=16, width=16, fps=12.0, short_video="loop"),
}  # fmt: skip


STATES_MORE = {"cut", "fragmented_declared"}  # headers that claim more than the file holds


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_seek_cases(tmp_path_factory.mktemp("seek_cases"))


def test_every_kind_of_file_is_written(cases):
    expected = {"bframes", "open_gop", "long_gop", "vfr", "negative_start", "rotated", "ntsc", "mjpeg", "vp9",
                "fragmented", "fragmented_declared", "cut"}  # fmt: skip
    assert expected <= set(cases)  # av1 too where this FFmpeg has an AV1 encoder
    import av

    assert ("av1" in cases) == ("libsvtav1" in av.codecs_available)


def test_the_fragmented_init_segment_declares_twice_what_its_fragments_hold(cases):
    import av

    with av.open(str(cases["fragmented_declared"])) as container:
        stream = container.streams.video[0]
        declared = float(stream.duration * stream.time_base), container.duration
        frames = [frame.time for frame in container.decode(stream)]
    assert declared == (pytest.approx(4.0), 4_000_000)
    assert len(frames) == 48 and max(frames) - min(frames) < 2.0  # 8 of the 16 fragments of 6 frames at 24 fps


def decode(path, cfg: PreprocessConfig, mode: str) -> tuple[list[bytes], video.DecodeStats]:
    stats = video.DecodeStats()
    clips = list(video.iter_clips(path, dataclasses.replace(cfg, decode=mode), name=str(path), stats=stats))
    as_records = [records.encode_clip(c.frames, 0, "a", "v", c.frame_indices, c.timestamps) for c in clips]
    return as_records, stats


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_seek_and_auto_give_byte_identical_records(cases, config_name):
    cfg = CONFIGS[config_name]
    for name, path in sorted(cases.items()):
        sequential, seq_stats = decode(path, cfg, "sequential")
        seek, seek_stats = decode(path, cfg, "seek")
        auto, auto_stats = decode(path, cfg, "auto")
        assert sequential and seek == sequential and auto == sequential, f"{name}: the records differ"
        assert seq_stats.mode == "sequential" and seek_stats.mode == "seek", name
        assert not seek_stats.fell_back, f"{name}: seeking fell back, so this compared sequential with itself"
        assert seek_stats.frames_kept == seq_stats.frames_kept == auto_stats.frames_kept, name
        assert auto_stats.frames_decoded <= seq_stats.frames_decoded, name
        assert seek_stats.shorter_than_stated == (name in STATES_MORE), name


def test_seeking_decodes_fewer_frames_on_long_gops_and_long_files(cases):
    cfg = CONFIGS["uniform"]
    for name in ("bframes", "ntsc", "vp9", "mjpeg"):
        _, seq = decode(cases[name], cfg, "sequential")
        _, seek = decode(cases[name], cfg, "seek")
        assert seek.frames_decoded < seq.frames_decoded * 0.7, (name, seek, seq)
        assert seek.frames_kept == 12  # 3 clips of 4 distinct frames


class _SeekLog:
    """Wraps a container and records the timestamps it is asked to seek to."""

    def __init__(self, inner, log):
        self._inner, self._log = inner, log

    def seek(self, offset, **kwargs):
        self._log.append(offset)
        return self._inner.seek(offset, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_seeks_only_go_forward(cases, monkeypatch):
    seeks: list[int] = []
    real_open = video._open_container
    monkeypatch.setattr(video, "_open_container", lambda target: _SeekLog(real_open(target), seeks))
    cfg = dataclasses.replace(CONFIGS["uniform"], clips_per_video=5)
    for name in ("bframes", "vp9", "open_gop", "mjpeg"):
        seeks.clear()
        decode(cases[name], cfg, "seek")
        assert seeks and seeks == sorted(seeks), (name, seeks)


def test_a_seek_that_misses_falls_back_to_sequential_with_the_same_records(cases, monkeypatch):
    cfg = CONFIGS["uniform"]
    expected, _ = decode(cases["bframes"], cfg, "sequential")
    real = keyframes.choose

    def off_by_one(mode, index, needed):  # an index that is wrong about where the last range starts
        plan = real(mode, index, needed)
        if not plan.ranges:
            return plan
        last = dataclasses.replace(plan.ranges[-1], first=plan.ranges[-1].first + 1)
        return dataclasses.replace(plan, ranges=(*plan.ranges[:-1], last))

    monkeypatch.setattr(keyframes, "choose", off_by_one)
    got, stats = decode(cases["bframes"], cfg, "seek")
    assert got == expected
    assert stats.fell_back and stats.mode == "sequential"


def test_file_objects_seek_too(cases):
    cfg = CONFIGS["uniform"]
    path = cases["vp9"]
    stats = video.DecodeStats()
    from_file = list(video.iter_clips(io.BytesIO(path.read_bytes()), dataclasses.replace(cfg, decode="seek"), stats=stats))
    assert stats.mode == "seek" and not stats.fell_back
    assert from_file == list(video.iter_clips(path, dataclasses.replace(cfg, decode="sequential")))


@pytest.mark.parametrize("mode", ["sequential", "seek"])
def test_the_time_limit_holds_in_every_mode(cases, mode):
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(cases["long_gop"], dataclasses.replace(CONFIGS["uniform"], decode=mode), timeout_s=1e-9))
    assert info.value.stage == "timeout"


def test_sequential_decoding_after_the_index_pass_reuses_the_open_file(cases, monkeypatch):
    opens = []
    real_open = video._open_container
    monkeypatch.setattr(video, "_open_container", lambda target: opens.append(target) or real_open(target))
    cfg = CONFIGS["uniform"]
    for name in ("bframes", "negative_start", "mjpeg", "vp9", "fragmented"):
        opens.clear()
        decode(cases[name], cfg, "sequential")
        assert len(opens) == 1, f"{name}: opened {len(opens)} times"


def test_a_restart_that_misses_the_first_frame_opens_the_file_again(cases, monkeypatch):
    cfg = CONFIGS["uniform"]
    expected, _ = decode(cases["bframes"], cfg, "sequential")
    real, real_open, opens = video._OpenVideo.back_to_start, video._open_container, []
    monkeypatch.setattr(video._OpenVideo, "back_to_start", lambda self: (real(self) or 0) + 1)  # a wrong promise
    monkeypatch.setattr(video, "_open_container", lambda target: opens.append(target) or real_open(target))
    got, _ = decode(cases["bframes"], cfg, "sequential")
    assert got == expected and len(opens) == 2
