"""Tests of training.predict: JSON lines per video, errors per video, the same sampling as the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from orchestration_fixtures import REPO, TINY_PARAMS, copy_model_dir, read_only, register_champion, use_store

from pipeline import records
from training import predict
from training.classifier import VideoClassifier
from vidseq.params import MlflowConfig


@pytest.fixture(scope="module")
def champion_store(model_root, tmp_path_factory):
    """A store in which the tiny model is ``vidseq-cnn-lstm@champion``; returns its URI."""
    return register_champion(model_root, tmp_path_factory.mktemp("predict-store"), "predict-test")


def videos(model_root, count=2):
    found = sorted(str(p) for p in (model_root / "demo").rglob("*.*"))
    return found[:count]


def lines(text):
    return [json.loads(line) for line in text.strip().splitlines()]


def test_each_video_prints_one_json_line_with_label_and_probabilities(model_root, capsys):
    paths = videos(model_root, 3)
    assert predict.main([*paths, "--model", str(model_root / "models")]) == 0
    captured = capsys.readouterr()
    out = lines(captured.out)
    classes = records.read_spec(str(model_root / "models")).classes
    assert captured.err == f"model {model_root / 'models'}: {len(classes)} classes: {', '.join(classes)}\n"
    assert [line["video"] for line in out] == paths
    for line in out:
        assert set(line) == {"video", "label", "probabilities", "clips"}
        assert list(line["probabilities"]) == list(classes)
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert line["label"] == max(line["probabilities"], key=line["probabilities"].get)
        assert line["clips"] == TINY_PARAMS["preprocess"]["clips_per_video"]


def test_a_bad_video_gets_an_error_line_the_others_are_answered_exit_1(model_root, tmp_path, capsys):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    good = videos(model_root, 2)
    argv = [good[0], str(garbage), str(tmp_path / "missing.avi"), good[1],
            "--model", str(model_root / "models"), "--top-k", "2"]  # fmt: skip
    assert predict.main(argv) == 1
    captured = capsys.readouterr()
    out = lines(captured.out)
    assert [line["video"] for line in out] == [good[0], str(garbage), str(tmp_path / "missing.avi"), good[1]]
    assert out[1]["error"].startswith("open: not a readable video file")
    assert out[2]["error"] == f"open: no such file: {tmp_path / 'missing.avi'}"
    for line in (out[0], out[3]):
        assert "error" not in line and len(line["top_k"]) == 2
        assert line["top_k"][0]["probability"] >= line["top_k"][1]["probability"]
        assert line["label"] == line["top_k"][0]["label"]
    assert "2 of 4 video(s) could not be classified" in captured.err


def test_probabilities_average_the_clips_the_pipeline_made(model_root):
    """Predict samples a video exactly as preprocessing did: same clips, same model output."""
    from training.data import make_dataset

    classifier = VideoClassifier.from_dir(str(model_root / "models"))
    spec = records.read_spec(str(model_root / "records"))
    by_video: dict[str, list[np.ndarray]] = {}
    test_split = make_dataset(str(model_root / "records"), "test", spec, 8, with_video_id=True)
    for clips, _, ids in test_split.as_numpy_iterator():
        for clip, video_id in zip(clips, ids):
            by_video.setdefault(video_id.decode(), []).append(clip)
    assert by_video
    for video_id, clips in by_video.items():
        expected = np.asarray(classifier.model.predict_on_batch(np.stack(clips))).mean(axis=0)
        result = classifier.classify(str(model_root / "demo" / video_id))
        assert result["clips"] == len(clips)
        np.testing.assert_allclose(list(result["probabilities"].values()), expected, rtol=1e-6, atol=1e-7)


def test_the_default_model_is_the_registered_champion(model_root, champion_store, tmp_path):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion_store, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    video = videos(model_root, 1)[0]
    done = subprocess.run([sys.executable, "-m", "training.predict", video], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    classes = records.read_spec(str(model_root / "models")).classes
    assert f"model models:/vidseq-cnn-lstm@champion (version 1): 6 classes: {', '.join(classes)}\n" in done.stderr
    (line,) = lines(done.stdout)
    in_process = predict.predict_video(VideoClassifier.from_dir(str(model_root / "models")), video)
    assert line["label"] == in_process["label"]
    assert line["probabilities"] == pytest.approx(in_process["probabilities"], abs=1e-6)


@pytest.mark.parametrize(
    "reference, message",
    [
        ("models:/vidseq-cnn-lstm@nope", "vidseq-cnn-lstm has no alias @nope (its aliases: @challenger (v1), "
                                         "@champion (v1)); predict with the last registered version"),
        ("models:/no-such-model@champion", "cannot load models:/no-such-model@champion from sqlite:///"),
        ("models:/no-such-model@champion", "no model is registered as no-such-model in this store: train and "
                                           "register one (dvc repro), or predict with the training output folder: "
                                           "--model models"),
        ("no/such/folder", "model no/such/folder not found: give a training output folder"),
        ("http://host/model", "unsupported model URI http://host/model: http: is not an MLflow model store"),
    ],
)
def test_a_bad_model_reference_is_one_line_and_exit_2(
    model_root, champion_store, monkeypatch, capsys, reference, message
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    assert predict.main([videos(model_root, 1)[0], "--model", reference]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def store_without_champion(model_root, tmp_path_factory):
    """A store where two versions of ``no-champ`` failed the gate (0.7 then 0.5 < 0.8); ``(uri, params.yaml)``."""
    from orchestration_fixtures import use_store

    from training.tracking import registry
    from vidseq.params import Params, RegisterConfig

    folder = tmp_path_factory.mktemp("no-champion")
    params = {**TINY_PARAMS, "register": {"model_name": "no-champ", "min_accuracy": 0.8}}
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = json.loads((model_root / "reports" / "metrics.json").read_text())
    with pytest.MonkeyPatch.context() as patch:
        uri = use_store(patch, folder)
        for value in (0.7, 0.5):
            (folder / "metrics.json").write_text(json.dumps({**metrics, "video_accuracy": value}))
            record = registry.register(
                str(copy_model_dir(model_root, folder / f"models-{value}")), str(folder / "metrics.json"),
                str(folder / "registry.json"), register_cfg=RegisterConfig("no-champ", min_accuracy=0.8),
                mlflow_cfg=MlflowConfig("no-champion"), params=Params.from_dict(params),
            )  # fmt: skip
            assert record["decision"] == "rejected"
    return uri, folder / "params.yaml"


def test_without_a_champion_predict_says_why_and_what_to_use_instead(model_root, store_without_champion, monkeypatch,
                                                                     capsys):  # fmt: skip
    uri, params = store_without_champion
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    video = videos(model_root, 1)[0]
    assert predict.main([video, "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alias champion not found" not in err
    assert err.startswith(f"error: cannot load models:/no-champ@champion from {uri}: no version of no-champ has passed "
                          "the promotion gate yet (register.min_accuracy = 0.8 on video_accuracy; 2 versions: best v1 "
                          "with video_accuracy 0.7000, last v2 with 0.5000), so none is @champion; ")  # fmt: skip
    for hint in ("--model models:/no-champ@challenger", "--model models:/no-champ/<version>", "--model models\n"):
        assert hint in err, hint
    assert predict.main([video, "--params", str(params), "--model", "models:/no-champ@challenger"]) == 0
    assert "model models:/no-champ@challenger (version 2)" in capsys.readouterr().err
    assert predict.main([video, "--model", "models:/no-champ/1"]) == 0


def test_a_champion_alias_removed_by_hand_is_told_apart_from_a_failed_gate(model_root, champion_store, monkeypatch):
    import mlflow

    from training.tracking import registry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    client = mlflow.MlflowClient(champion_store)
    assert registry.missing_alias_reason(client, "vidseq-cnn-lstm", "champion") is None  # it resolves
    client.delete_registered_model_alias("vidseq-cnn-lstm", "champion")
    try:
        reason = registry.missing_alias_reason(client, "vidseq-cnn-lstm", "champion")
    finally:
        client.set_registered_model_alias("vidseq-cnn-lstm", "champion", "1")
    assert reason.startswith("no version of vidseq-cnn-lstm holds @champion although one passed the gate "
                             "(register.min_accuracy = 0.8 on video_accuracy; 1 version: best v1 with video_accuracy ")
    assert "the alias was removed" in reason


def test_a_truncated_model_keras_is_one_line_naming_it_and_exit_2(model_root, tmp_path, capsys):
    model_dir = copy_model_dir(model_root, tmp_path / "models")
    keras_file = model_dir / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[:4096])
    assert predict.main([videos(model_root, 1)[0], "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{keras_file} is damaged (truncated?)" in err and "re-train" in err


def test_folders_devices_and_fifos_are_not_regular_files(model_root, tmp_path, capsys):
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)  # opening it would block: predict must not
    good = videos(model_root, 1)[0]
    assert predict.main([str(tmp_path), "/dev/null", str(fifo), good, "--model", str(model_root / "models")]) == 1
    out = lines(capsys.readouterr().out)
    assert out[0]["error"] == f"open: not a regular file: {tmp_path} is a folder: give a video file"
    assert out[1]["error"] == "open: not a regular file: /dev/null is a device or socket: give a video file"
    assert out[2]["error"] == f"open: not a regular file: {fifo} is a FIFO: give a video file"
    assert "error" not in out[3]


def test_per_video_limits_come_from_the_environment_and_the_flags_override(model_root, tmp_path, monkeypatch, capsys):
    from pipeline.writer import write_video

    big = tmp_path / "big.mp4"
    write_video(str(big), [np.full((128, 128, 3), 10 * i, np.uint8) for i in range(12)], 12, "mp4")
    demo = videos(model_root, 1)[0]  # 25 frames
    model = ["--model", str(model_root / "models")]
    monkeypatch.setenv("VIDSEQ_MAX_FRAMES", "5")
    assert predict.main([demo, str(big), *model, "--max-pixels", "12000"]) == 1
    small, large = lines(capsys.readouterr().out)
    assert small["error"] == "limit: the video has more than 5 frames (--max-frames): send a shorter video"
    assert large["error"].startswith("limit: frames of 128x128 (16384 pixels) are over the limit of 12000 pixels")
    assert predict.main([demo, *model, "--max-frames", "100"]) == 0
    assert "error" not in lines(capsys.readouterr().out)[0]
    assert predict.main([demo, *model, "--decode-timeout", "0.000001"]) == 1
    assert lines(capsys.readouterr().out)[0]["error"] == "timeout: decoding took longer than 1e-06 s (--decode-timeout)"
    assert predict.main([demo, *model, "--max-frames", "0"]) == 2
    assert capsys.readouterr().err == "error: --max-frames must be positive, got 0\n"


def test_a_model_in_a_read_only_store_loads(model_root, champion_store):
    """The store is really read-only (orchestration_fixtures.read_only); predict loads through a copy."""
    store = champion_store.removeprefix("sqlite:///").rsplit("/", 1)[0]
    predict_args = [sys.executable, "-m", "training.predict", videos(model_root, 1)[0], "--model",
                    "models:/vidseq-cnn-lstm@champion"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": champion_store, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with read_only(store) as prefix:
        done = subprocess.run([*prefix, *predict_args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode not in (97, 98), f"the store could not be made read-only: {done.stderr[-500:]}"
    assert done.returncode == 0, done.stderr[-2000:]
    assert lines(done.stdout)[0]["label"]


def test_the_tensor_only_keras_model_is_refused(model_root, monkeypatch, tmp_path, capsys):
    import mlflow

    from training.tracking import model_logging, runs

    use_store(monkeypatch, tmp_path)
    runs.configure(MlflowConfig("predict-keras"))
    with mlflow.start_run():
        info = model_logging.log_keras_model(*_model_and_spec(model_root))
    assert predict.main([videos(model_root, 1)[0], "--model", info.model_uri]) == 2
    assert "is not a video classifier" in capsys.readouterr().err


def _model_and_spec(model_root):
    import keras

    model_dir = model_root / "models"
    return keras.saving.load_model(str(model_dir / "model.keras")), records.read_spec(str(model_dir))
