"""Tests for pipeline.transforms: each PTransform with TestPipeline + assert_that."""

import glob
import json
import os

import apache_beam as beam
import pytest
import tfrecord_lite
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from videos import write_bad_files, write_tiny_video

from pipeline import records, transforms
from vidseq.params import PreprocessConfig
from pipeline.sources import VideoItem

CFG = PreprocessConfig(sequence_length=4, height=16, width=16, fps=8.0, clips_per_video=2, short_video="skip")
CLASSES = ("left", "right")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    good = [
        write_tiny_video(root / "left" / "a.mp4", seconds=1.5, dx=-1),
        write_tiny_video(root / "right" / "b.avi", seconds=1.0, dx=1),
        write_tiny_video(root / "right" / "c.webm", seconds=2.0, dx=1),
    ]
    short = write_tiny_video(root / "left" / "short.mp4", seconds=0.25)
    bad = write_bad_files(root / "left", good[0])
    return root, good, short, bad


def _item(root, path, split="train"):
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return VideoItem(path=str(path), video_id=rel, label=rel.split("/")[0], group=rel, split=split)


def test_decode_clips_outputs_and_dead_letters(videos):
    root, good, short, bad = videos
    items = [_item(root, p, split) for p, split in zip(good, ["train", "val", "test"])]
    items.append(_item(root, short))
    items += [_item(root, root / "left" / name) for name in bad]
    with TestPipeline() as p:
        decoded = p | beam.Create(items) | transforms.DecodeClips(CFG, CLASSES)
        clip_ids = decoded["clips"] | "Ids" >> beam.MapTuple(
            lambda split, rec: (split, records.decode_clip(rec)["video_id"], len(records.decode_clip(rec)["frames"]))
        )
        assert_that(
            clip_ids,
            equal_to([("train", "left/a.mp4", 4)] * 2 + [("val", "right/b.avi", 4)] * 2 + [("test", "right/c.webm", 4)] * 2),
            label="clips",
        )
        # (clips, videos, frames decoded, frames kept, by seek, sequentially, shorter than stated):
        # one GOP each, so auto decodes them sequentially, up to the last needed frame
        assert_that(
            decoded[transforms.VIDEOS_TAG],
            equal_to([("train", (2, 1, 18, 8, 0, 1, 0, 0)), ("val", (2, 1, 12, 8, 0, 1, 0, 0)), ("test", (2, 1, 24, 8, 0, 1, 0, 0))]),
            label="videos",
        )
        failed = decoded[transforms.ERRORS_TAG] | beam.Map(lambda e: e["path"].split("/")[-1])
        assert_that(failed, equal_to(["short.mp4", *bad]), label="errors")


def test_dead_letters_say_why(videos):
    root, good, short, bad = videos
    fn = transforms.DecodeVideoFn(CFG, CLASSES)
    reasons = {}
    for name in ["short.mp4", *bad]:
        (out,) = list(fn.process(_item(root, root / "left" / name)))
        assert out.tag == transforms.ERRORS_TAG
        reasons[name] = out.value
    assert reasons["short.mp4"]["stage"] == "sample" and "short_video=skip" in reasons["short.mp4"]["reason"]
    assert reasons["audio_only.mkv"]["stage"] == "probe" and "video stream" in reasons["audio_only.mkv"]["reason"]
    for error in reasons.values():
        assert set(error) == {"path", "reason", "stage"} and error["reason"] and "\n" not in error["reason"]


def test_write_clips_shards_by_size_and_reads_back(tmp_path):
    payloads = [records.encode_clip([bytes([i]) * 3000] * 4, i % 2, CLASSES[i % 2], f"v{i}", [0, 1, 2, 3], [0, 0.1, 0.2, 0.3]) for i in range(12)]
    cfg = PreprocessConfig(sequence_length=4, shard_size_mb=0.02)  # ~20 KB shards, records are ~12 KB
    with TestPipeline() as p:
        _ = p | beam.Create(payloads) | transforms.WriteClips(str(tmp_path), "train", cfg)
    shards = sorted(glob.glob(str(tmp_path / records.shard_pattern("train"))))
    assert len(shards) >= 3
    count = len(shards)
    assert [os.path.basename(s) for s in shards] == [records.shard_name("train", i, count) for i in range(count)]
    back = [r for s in shards for r in tfrecord_lite.tf_record_iterator(s)]
    assert sorted(r["video_id"][0].decode() for r in back) == sorted(f"v{i}" for i in range(12))


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_shards_depend_on_the_clips_alone_not_on_their_order_or_the_workers(tmp_path, compression):
    payloads = [records.encode_clip([bytes([i]) * 3000] * 4, i % 2, CLASSES[i % 2], f"v{i}", [0, 1, 2, 3], [0, 0.1, 0.2, 0.3]) for i in range(40)]
    cfg = PreprocessConfig(sequence_length=4, shard_size_mb=0.05, compression=compression)
    written = []
    for run, (order, options) in enumerate([
        (payloads, ["--direct_num_workers=1"]),
        (payloads[::-1], ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]),
        (payloads[7:] + payloads[:7], ["--direct_num_workers=2", "--direct_running_mode=multi_processing"]),
    ]):  # fmt: skip
        out = tmp_path / str(run)
        with TestPipeline(argv=options) as p:
            _ = p | beam.Create(order) | transforms.WriteClips(str(out), "train", cfg)
        written.append({f.name: f.read_bytes() for f in sorted(out.iterdir())})
    assert written[0] == written[1] == written[2]  # byte-identical files, same names
    names = sorted(written[0])
    assert len(names) > 2 and names == [records.shard_name("train", i, len(names), compression == "gzip") for i in range(len(names))]


def test_write_clips_gzip(tmp_path):
    import tensorflow as tf

    payload = records.encode_clip([b"x"] * 4, 0, "left", "v", [0, 1, 2, 3], [0, 0.1, 0.2, 0.3])
    cfg = PreprocessConfig(sequence_length=4, compression="gzip")
    with TestPipeline() as p:
        _ = p | beam.Create([payload] * 3) | transforms.WriteClips(str(tmp_path), "val", cfg)
    shards = glob.glob(str(tmp_path / records.shard_pattern("val", compressed=True)))
    assert shards
    ds = tf.data.TFRecordDataset(shards, compression_type="GZIP")
    assert [bytes(x.numpy()) for x in ds] == [payload] * 3


def test_write_errors_and_stats(tmp_path):
    errors = [transforms.error_record("b.mp4", "bad\nthing", "decode"), transforms.error_record("a.mp4", "x", "open")]
    with TestPipeline() as p:
        _ = p | "E" >> beam.Create(errors) | transforms.WriteErrors(str(tmp_path))
        _ = p | "S" >> beam.Create(
            [("train", (3, 1, 30, 12, 1, 0, 0, 0)), ("train", (2, 1, 20, 8, 0, 1, 1, 1)), ("test", (1, 1, 5, 4, 0, 1, 0, 0))]
        ) | transforms.WriteStats(str(tmp_path))
    lines = (tmp_path / records.ERRORS_JSONL).read_text().splitlines()
    assert sorted(json.loads(line)["path"] for line in lines) == ["a.mp4", "b.mp4"]
    assert {"path": "b.mp4", "reason": "bad thing", "stage": "decode"} in [json.loads(x) for x in lines]
    assert transforms.read_stats(str(tmp_path)) == {
        "train": {"clips": 5, "videos": 2},
        "val": {"clips": 0, "videos": 0},
        "test": {"clips": 1, "videos": 1},
    }
    assert transforms.read_decode_counts(str(tmp_path)) == {
        "frames_decoded": 55, "frames_kept": 24, "videos_seek": 1, "videos_sequential": 2, "videos_shorter_than_stated": 1,
        "videos_reused": 1,
    }  # fmt: skip


def test_empty_inputs_write_no_files(tmp_path):
    """Sinks skip empty output (S3 cannot hold zero-byte objects); readers take absence as empty."""
    with TestPipeline() as p:
        _ = p | "E" >> beam.Create([]) | transforms.WriteErrors(str(tmp_path))
        _ = p | "S" >> beam.Create([]) | transforms.WriteStats(str(tmp_path))
        _ = p | "C" >> beam.Create([]) | transforms.WriteClips(str(tmp_path), "test", CFG)
    assert not list(tmp_path.iterdir())
    assert records.read_errors(str(tmp_path)) == ([], [])
    assert transforms.read_stats(str(tmp_path))["test"] == {"clips": 0, "videos": 0}


def test_unexpected_exception_becomes_a_dead_letter(videos, monkeypatch):
    root, good, short, bad = videos
    from pipeline import video

    real = video.iter_clips

    def flaky(source, cfg, *, name="", **kwargs):
        if name.endswith("b.avi"):
            raise ZeroDivisionError("a bug in a library")
        return real(source, cfg, name=name, **kwargs)

    monkeypatch.setattr(video, "iter_clips", flaky)
    items = [_item(root, good[0]), _item(root, good[1])]
    with TestPipeline() as p:
        decoded = p | beam.Create(items) | transforms.DecodeClips(CFG, CLASSES)
        assert_that(decoded[transforms.VIDEOS_TAG] | beam.MapTuple(lambda split, counts: (split, counts[0])),
                    equal_to([("train", 2)]), label="videos")
        assert_that(
            decoded[transforms.ERRORS_TAG],
            equal_to([{"path": "right/b.avi", "reason": "unexpected error: ZeroDivisionError('a bug in a library')", "stage": "crash"}]),
            label="errors",
        )


def test_frame_counters(videos):
    root, good, short, bad = videos
    from apache_beam.metrics.metric import MetricsFilter

    pipeline = TestPipeline()
    _ = pipeline | beam.Create([_item(root, p) for p in good]) | transforms.DecodeClips(CFG, CLASSES)
    result = pipeline.run()
    result.wait_until_finish()

    def counter(name):
        (found,) = result.metrics().query(MetricsFilter().with_namespace(transforms.NAMESPACE).with_name(name))["counters"]
        return found.committed

    assert counter("frames_decoded") == 18 + 12 + 24
    assert counter("frames_kept") == 3 * 8


class _Stuck:
    """A file whose read never returns to the decoder (a FIFO nobody writes, a dead mount)."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def read(self, size=-1):
        self.release.wait()
        return b""

    def seekable(self):
        return False

    def tell(self):
        return 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_decoder_that_never_returns_is_abandoned_and_recorded_as_timeout(videos, monkeypatch):
    root, good, short, bad = videos
    from apache_beam.io.filesystems import FileSystems

    stuck = _Stuck()
    real_open = FileSystems.open
    monkeypatch.setattr(
        FileSystems, "open", staticmethod(lambda path, *a, **k: stuck if path.endswith("b.avi") else real_open(path, *a, **k))
    )
    cfg = PreprocessConfig(**{**CFG.as_dict(), "video_timeout_s": 0.2})
    fn = transforms.DecodeVideoFn(cfg, CLASSES)
    try:
        (out,) = list(fn.process(_item(root, good[1])))
        assert out.tag == transforms.ERRORS_TAG and out.value["stage"] == "timeout"
        assert "did not return within 1.2 s" in out.value["reason"] and "abandoned" in out.value["reason"]
        outputs = list(fn.process(_item(root, good[0])))  # the next video decodes as usual
        assert [getattr(o, "tag", "clip") for o in outputs] == [transforms.VIDEOS_TAG, "clip", "clip"]
    finally:
        stuck.release.set()
