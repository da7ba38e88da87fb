"""Tests of pipeline.video (and pipeline.frames) on tiny real videos written with PyAV."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import frames as frames_module
from pipeline import video
from vidseq.params import PreprocessConfig
from pipeline.writer import write_video

SOURCE_FPS = 24
SOURCE_FRAMES = 24  # 1 s


def counter_frames(n: int = SOURCE_FRAMES, size: tuple[int, int] = (24, 32)) -> list[np.ndarray]:
    """Flat grey frames whose brightness encodes the frame number: 8 + 10 * i."""
    return [np.full((*size, 3), 8 + 10 * i, dtype=np.uint8) for i in range(n)]


def brightness_to_index(array: np.ndarray) -> int:
    return round((float(array.mean()) - 8) / 10)


def config(**overrides) -> PreprocessConfig:
    base = dict(sequence_length=4, height=16, width=16, fps=8.0, clips_per_video=2, frame_encoding="png")
    return PreprocessConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """The counter video in each of the main containers/codecs, 1 s at 24 fps."""
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for ext in ("mp4", "avi", "webm"):
        out[ext] = folder / f"counter.{ext}"
        write_video(str(out[ext]), counter_frames(), SOURCE_FPS, ext)
    return out


@pytest.fixture(scope="module")
def mp4(videos) -> Path:
    return videos["mp4"]


def expected_indices(cfg: PreprocessConfig, start_index: int) -> list[int]:
    """Source frames that serve target frames start..start+T-1 at cfg.fps (source is 24 fps)."""
    return [int((start_index + i) * SOURCE_FPS / cfg.fps + 1e-9) for i in range(cfg.sequence_length)]


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("ext", ["mp4", "avi", "webm"])
def test_clips_have_the_planned_frames_from_across_the_video(videos, ext):
    cfg = config()
    results = list(video.iter_clip_arrays(videos[ext], cfg))
    # 1 s at 8 fps = 8 target frames; 2 uniform clips of 4 start at target frames 0 and 4
    assert [clip.index for clip, _ in results] == [0, 1]
    for (clip, array), start in zip(results, (0, 4)):
        assert array.shape == (4, 16, 16, 3) and array.dtype == np.uint8
        assert len(clip.frames) == len(clip.frame_indices) == len(clip.timestamps) == 4
        assert list(clip.frame_indices) == expected_indices(cfg, start)  # 0,3,6,9 then 12,15,18,21
        assert clip.timestamps == pytest.approx([i / SOURCE_FPS for i in clip.frame_indices])
        assert [brightness_to_index(a) for a in array] == list(clip.frame_indices)  # the pixels match
    assert results[-1][0].frame_indices[-1] == 21  # the last clip reaches the end of the video


def test_path_file_object_and_bytesio_give_the_same_clips(mp4):
    cfg = config(frame_encoding="jpeg")
    from_path = list(video.iter_clips(mp4, cfg))
    with open(mp4, "rb") as handle:
        from_file = list(video.iter_clips(handle, cfg))
    from_bytes = list(video.iter_clips(io.BytesIO(mp4.read_bytes()), cfg, name="bytes"))
    assert from_path == from_file == from_bytes
    assert from_path[0].frames[0][:2] == b"\xff\xd8"  # JPEG


def test_sliding_windows_and_upsampling(mp4):
    cfg = config(fps=48.0, sampling="sliding", clip_stride=20, sequence_length=8)
    clips = list(video.iter_clips(mp4, cfg))
    # 1 s at 48 fps = 48 target frames; windows at 0, 20, 40 (40 + 8 = 48)
    assert [c.frame_indices for c in clips] == [
        tuple(expected_indices(cfg, start)) for start in (0, 20, 40)
    ]
    assert clips[0].frame_indices == (0, 0, 1, 1, 2, 2, 3, 3)  # each source frame twice
    assert clips[0].frames[0] is clips[0].frames[1]  # encoded once, shared


@pytest.mark.parametrize("ext, fps", [("mkv", 30.0), ("avi", 30.0), ("mp4", 29.97), ("webm", 25.0)])
def test_equal_rates_map_frames_one_to_one(tmp_path, ext, fps):
    path = tmp_path / f"rate.{ext}"
    write_video(str(path), counter_frames(24), fps, ext)  # Matroska rounds times to whole ms
    cfg = config(fps=fps, sampling="sliding", sequence_length=8, clip_stride=8)
    clips = list(video.iter_clips(path, cfg))
    assert [i for c in clips for i in c.frame_indices] == list(range(24))


def test_each_frame_is_converted_once_and_unused_frames_never(mp4, monkeypatch):
    converted: list[int] = []
    original = frames_module.FrameConverter.convert

    def counting(self, frame):
        converted.append(frame.pts)
        return original(self, frame)

    monkeypatch.setattr(frames_module.FrameConverter, "convert", counting)
    cfg = config(sampling="sliding", clip_stride=1, sequence_length=4)  # heavy overlap
    clips = list(video.iter_clips(mp4, cfg))
    assert len(clips) == 5  # 8 target frames, windows at 0..4
    used = {i for c in clips for i in c.frame_indices}
    assert used == {0, 3, 6, 9, 12, 15, 18, 21}
    assert len(converted) == len(set(converted)) == len(used)  # once each, none of the 16 unused
    assert clips[0].frames[1] is clips[1].frames[0]  # overlapping clips share the bytes


def test_iter_clip_arrays_decodes_the_stored_bytes(mp4):
    cfg = config(frame_encoding="jpeg", jpeg_quality=50)
    for clip, array in video.iter_clip_arrays(mp4, cfg):
        for data, frame in zip(clip.frames, array):
            np.testing.assert_array_equal(video.decode_image(data), frame)


def test_probe(videos):
    info = video.probe(videos["mp4"])
    assert info == video.VideoInfo(
        duration_s=1.0, fps=24.0, width=32, height=24, rotation=0, frame_count=24, codec="h264"
    )
    webm = video.probe(io.BytesIO(videos["webm"].read_bytes()))
    assert (webm.duration_s, webm.codec, webm.frame_count) == (1.0, "vp9", None)


class _NonSeekableSink:
    def __init__(self):
        self.buffer = io.BytesIO()

    def write(self, data):
        return self.buffer.write(data)


@pytest.mark.parametrize("ext", ["mkv", "webm"])
def test_duration_missing_from_metadata_comes_from_a_packet_scan(tmp_path, ext):
    sink = _NonSeekableSink()  # Matroska written to a pipe has no Duration element
    write_video(sink, counter_frames(), SOURCE_FPS, ext)
    data = sink.buffer.getvalue()
    with av.open(io.BytesIO(data)) as container:
        assert container.duration is None and container.streams.video[0].duration is None
    path = tmp_path / f"no_duration.{ext}"
    path.write_bytes(data)
    assert video.probe(path).duration_s == pytest.approx(1.0, abs=2e-3)  # ms time base
    cfg = config()
    expected = list(video.iter_clips(path, cfg))
    assert [c.frame_indices for c in expected] == [(0, 3, 6, 9), (12, 15, 18, 21)]
    assert list(video.iter_clips(io.BytesIO(data), cfg)) == expected  # rewinds the file object


# --------------------------------------------------------------------------- geometry


@pytest.fixture(scope="module")
def bands(tmp_path_factory) -> Path:
    """64 wide × 32 high: four vertical bands, red | green | blue | white."""
    frame = np.zeros((32, 64, 3), dtype=np.uint8)
    frame[:, :16] = (255, 0, 0)
    frame[:, 16:32] = (0, 255, 0)
    frame[:, 32:48] = (0, 0, 255)
    frame[:, 48:] = 255
    path = tmp_path_factory.mktemp("bands") / "bands.avi"
    write_video(str(path), [frame] * 8, 8, "avi")
    return path


def colour(pixel: np.ndarray) -> str:
    r, g, b = (int(v) > 128 for v in pixel)
    return {(True, False, False): "red", (False, True, False): "green", (False, False, True): "blue",
            (True, True, True): "white", (False, False, False): "black"}.get((r, g, b), "?")


def first_frame(path, cfg) -> np.ndarray:
    return next(video.iter_clip_arrays(path, cfg))[1][0]


def test_crop_keeps_the_centre(bands):
    image = first_frame(bands, config(resize="crop", height=16, width=16))
    assert image.shape == (16, 16, 3)
    assert [colour(image[8, x]) for x in (1, 6, 9, 14)] == ["green", "green", "blue", "blue"]


def test_letterbox_keeps_everything_and_pads_black(bands):
    image = first_frame(bands, config(resize="letterbox", height=16, width=16))
    assert image.shape == (16, 16, 3)
    assert not image[:4].any() and not image[12:].any()  # 16×8 content centred: black bars
    assert [colour(image[8, x]) for x in (1, 6, 9, 14)] == ["red", "green", "blue", "white"]


@pytest.mark.parametrize("resize", ["crop", "letterbox"])
@pytest.mark.parametrize("ext", ["mp4", "avi"])
def test_odd_source_and_target_sizes(tmp_path, resize, ext):
    path = tmp_path / f"odd.{ext}"
    write_video(str(path), counter_frames(12, size=(33, 47)), 12, ext)  # writer pads to 34×48 for H.264
    clip, array = next(video.iter_clip_arrays(path, config(resize=resize, height=15, width=21)))
    assert array.shape == (4, 15, 21, 3)


@pytest.mark.parametrize(
    "rotation, where_white",
    [(90, "top"), (-90, "bottom"), (270, "bottom"), (180, "right"), (0, "left")],
)
def test_rotation_metadata_is_honoured(tmp_path, rotation, where_white):
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # landscape as stored: left half white
    stored[:, :16] = 255
    path = tmp_path / "phone.mp4"
    write_video(str(path), [stored] * 8, 8, "mp4", rotation=rotation)
    info = video.probe(path)
    portrait = rotation % 180 == 90
    assert (info.width, info.height) == ((16, 32) if portrait else (32, 16))
    image = first_frame(path, config(height=info.height, width=info.width))
    h, w = image.shape[:2]
    halves = {
        "top": (image[: h // 2], image[h // 2 :]),
        "bottom": (image[h // 2 :], image[: h // 2]),
        "left": (image[:, : w // 2], image[:, w // 2 :]),
        "right": (image[:, w // 2 :], image[:, : w // 2]),
    }
    white, black = halves[where_white]
    assert white.mean() > 200 and black.mean() < 50


def test_geometry_plan_for_a_rotated_portrait_video():
    # 1920×1080 stored, shown turned a quarter clockwise (rotation -90) as 1080×1920, cropped to 48×48
    geometry = frames_module.Geometry.plan(1920, 1080, -90, (48, 48), "crop")
    assert (geometry.scale_width, geometry.scale_height) == (85, 48)  # stored orientation
    assert (geometry.content_width, geometry.content_height) == (48, 85)
    assert (geometry.top, geometry.left) == (18, 0)
    scaled = np.zeros((48, 85, 3), dtype=np.uint8)
    assert geometry.apply(scaled).shape == (48, 48, 3)


# --------------------------------------------------------------------------- short videos


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("short") / "short.mp4"
    write_video(str(path), counter_frames(12), 30, "mp4")  # 0.4 s: 4 frames at 8 fps, one clip needs 8
    return path


@pytest.mark.parametrize(
    "policy, indices",
    [("pad", (0, 3, 7, 11, 11, 11, 11, 11)), ("loop", (0, 3, 7, 11, 0, 3, 7, 11))],
)
def test_short_video_pad_and_loop(short_mp4, policy, indices):
    (clip, array), = video.iter_clip_arrays(short_mp4, config(sequence_length=8, short_video=policy))
    assert clip.frame_indices == indices
    assert [brightness_to_index(a) for a in array] == list(indices)


def test_short_video_skip_is_a_sample_error(short_mp4):
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(short_mp4, config(sequence_length=8, short_video="skip")))
    assert info.value.stage == "sample"
    assert info.value.reason == (
        "video is 0.40 s (4 frames at 8 fps), shorter than one clip of 8 frames; short_video=skip"
    )


# --------------------------------------------------------------------------- bad inputs


def write_audio_only(path: Path, container_format: str, codec: str) -> Path:
    rate = 8000
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate)
        samples = (np.sin(np.arange(rate // 2) / 5) * 1000).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, videos) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    mp4_bytes = videos["mp4"].read_bytes()
    webm_bytes = videos["webm"].read_bytes()
    files = {
        "zero": b"",
        "truncated_mp4": mp4_bytes[: len(mp4_bytes) // 2],
        "random": np.random.default_rng(1).bytes(4096),
        "text": b"this is not a video\n" * 20,
        "truncated_webm": webm_bytes[: len(webm_bytes) // 2],
        "truncated_avi": videos["avi"].read_bytes()[: videos["avi"].stat().st_size // 2],
    }
    paths = {}
    for key, data in files.items():
        paths[key] = folder / f"{key}.{key.rpartition('_')[2] if '_' in key else 'mp4'}"
        paths[key].write_bytes(data)
    paths["wav"] = write_audio_only(folder / "audio.wav", "wav", "pcm_s16le")
    paths["mka"] = write_audio_only(folder / "audio.mp4", "matroska", "pcm_s16le")
    return paths


@pytest.mark.parametrize(
    "key, stage, words",
    [
        ("zero", "open", "not a readable video"),
        ("truncated_mp4", "open", "not a readable video"),
        ("random", "open", "not a readable video"),
        ("text", "open", "not a readable video"),
        ("wav", "probe", "no video stream (streams: audio)"),
        ("mka", "probe", "no video stream (streams: audio)"),
        ("truncated_avi", "decode", "decoding failed"),  # the last, partial packet breaks the decoder
    ],
)
@pytest.mark.parametrize("as_file", [False, True], ids=["path", "bytesio"])
def test_bad_inputs_raise_video_error(bad_files, key, stage, words, as_file):
    source = io.BytesIO(bad_files[key].read_bytes()) if as_file else bad_files[key]
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(source, config()))
    assert info.value.stage == stage
    assert words in info.value.reason and "\n" not in info.value.reason
    if stage in ("open", "probe"):
        with pytest.raises(video.VideoError):
            video.probe(source if not as_file else io.BytesIO(bad_files[key].read_bytes()))


@pytest.mark.parametrize("as_file", [False, True], ids=["path", "bytesio"])
def test_a_file_holding_less_than_its_header_states_is_planned_on_what_it_holds(bad_files, as_file):
    source = io.BytesIO(bad_files["truncated_webm"].read_bytes()) if as_file else bad_files["truncated_webm"]
    stats = video.DecodeStats()
    clips = list(video.iter_clips(source, config(), stats=stats))
    assert stats.shorter_than_stated  # the header says 1 s; the first half of the file holds about 0.5 s
    assert len(clips) == 1 and max(clips[0].frame_indices) < 14  # not 2 clips reaching frame 21


def test_a_pipe_is_decoded_sequentially_and_a_truncation_is_still_an_error(bad_files, mp4):
    class Pipe(io.BytesIO):
        def seekable(self):
            return False

    data = bad_files["truncated_webm"].read_bytes()
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(Pipe(data), config()))
    assert info.value.stage == "decode" and "truncated" in info.value.reason
    stats = video.DecodeStats()
    assert list(video.iter_clips(Pipe(mp4.read_bytes()), config(decode="seek"), stats=stats)) == list(
        video.iter_clips(mp4, config())
    )
    assert stats.mode == "sequential"  # no index without a second read


def test_video_error_pickles():
    import pickle

    error = pickle.loads(pickle.dumps(video.VideoError("no video stream", "probe")))
    assert (error.reason, error.stage, str(error)) == ("no video stream", "probe", "no video stream")


# --------------------------------------------------------------------------- time limit


def test_timeout_on_a_path(mp4):
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(mp4, config(), timeout_s=1e-9))
    assert info.value.stage == "timeout"
    assert "(preprocess.video_timeout_s)" in info.value.reason


class _SlowReader(io.BytesIO):
    """A file object whose reads stall (like a slow network filesystem)."""

    def read(self, size=-1):
        import time

        time.sleep(0.02)
        return super().read(size)


def test_timeout_trips_inside_a_stalled_read(mp4):
    with pytest.raises(video.VideoError) as info:
        list(video.iter_clips(_SlowReader(mp4.read_bytes()), config(), timeout_s=0.01))
    assert info.value.stage == "timeout"
    assert info.value.reason == "decoding took longer than 0.01 s (preprocess.video_timeout_s)"


def test_a_generous_timeout_changes_nothing(mp4):
    cfg = config()
    assert list(video.iter_clips(mp4, cfg, timeout_s=300)) == list(video.iter_clips(mp4, cfg))


def test_decode_threads_setting(mp4):
    cfg = config()
    single = dataclasses.replace(cfg, decode_threads=1)
    assert [c.frame_indices for c in video.iter_clips(mp4, single)] == [
        c.frame_indices for c in video.iter_clips(mp4, cfg)
    ]


# --------------------------------------------------------------------------- limits for untrusted input


def test_frames_over_max_pixels_are_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "wide.mp4"
    write_video(str(path), counter_frames(size=(128, 128)), SOURCE_FPS, "mp4")
    limits = video.DecodeLimits(max_pixels=64 * 64, names=(("max_pixels", "VIDSEQ_MAX_PIXELS"),))
    with monkeypatch.context() as patch:
        for loop in ("sequential", "seek"):
            patch.setattr(video.decoding, loop, lambda *args, **kwargs: pytest.fail("a decode loop was entered"))
        with pytest.raises(video.VideoError) as error:
            list(video.iter_clips(io.BytesIO(path.read_bytes()), config(), limits=limits))
    assert error.value.stage == "limit"
    assert "128x128 (16384 pixels)" in error.value.reason and "VIDSEQ_MAX_PIXELS" in error.value.reason
    assert len(list(video.iter_clips(str(path), config(), limits=video.DecodeLimits(max_pixels=128 * 128)))) == 2


def test_max_frames_stops_decoding_and_max_duration_refuses_before(mp4):
    with pytest.raises(video.VideoError) as error:
        list(video.iter_clips(str(mp4), config(), limits=video.DecodeLimits(max_frames=5)))
    assert error.value.stage == "limit" and "more than 5 frames" in error.value.reason
    with pytest.raises(video.VideoError) as error:
        list(video.iter_clips(str(mp4), config(), limits=video.DecodeLimits(max_duration_s=0.5)))
    assert error.value.stage == "limit" and "lasts 1.0 s, over the limit of 0.5 s" in error.value.reason
    assert len(list(video.iter_clips(str(mp4), config(), limits=video.DecodeLimits(max_frames=24)))) == 2


def test_the_decode_budget_of_limits_stops_decoding_and_names_its_setting(mp4):
    limits = video.DecodeLimits(timeout_s=1e-6, names=(("timeout_s", "VIDSEQ_DECODE_TIMEOUT_S"),))
    with pytest.raises(video.VideoError) as error:
        list(video.iter_clips(str(mp4), config(), timeout_s=300.0, limits=limits))
    assert error.value.stage == "timeout" and "(VIDSEQ_DECODE_TIMEOUT_S)" in error.value.reason
    with pytest.raises(video.VideoError) as error:  # the tighter budget wins
        list(video.iter_clips(str(mp4), config(), timeout_s=1e-6, limits=video.DecodeLimits(timeout_s=300.0)))
    assert "(preprocess.video_timeout_s)" in error.value.reason
