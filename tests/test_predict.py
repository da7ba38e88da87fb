"""Tests of training.predict: JSON lines per video, errors per video, the same sampling as the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from orchestration_fixtures import REPO, TINY_PARAMS, register_champion, use_store

from pipeline import records
from training import predict, serving
from training.orchestration_config import MlflowConfig


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
    out = lines(capsys.readouterr().out)
    classes = records.read_spec(str(model_root / "models")).classes
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

    classifier = serving.VideoClassifier.from_dir(str(model_root / "models"))
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
    (line,) = lines(done.stdout)
    in_process = predict.predict_video(serving.VideoClassifier.from_dir(str(model_root / "models")), video)
    assert line["label"] == in_process["label"]
    assert line["probabilities"] == pytest.approx(in_process["probabilities"], abs=1e-6)


@pytest.mark.parametrize(
    "reference, message",
    [
        ("models:/vidseq-cnn-lstm@nope", "Registered model alias nope not found"),
        ("models:/no-such-model@champion", "cannot load models:/no-such-model@champion"),
        ("no/such/folder", "model no/such/folder not found: give a training output folder"),
    ],
)
def test_a_bad_model_reference_is_one_line_and_exit_2(
    model_root, champion_store, monkeypatch, capsys, reference, message
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", champion_store)
    assert predict.main([videos(model_root, 1)[0], "--model", reference]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_tensor_only_keras_model_is_refused(model_root, monkeypatch, tmp_path, capsys):
    import mlflow

    from training import model_logging, tracking

    use_store(monkeypatch, tmp_path)
    tracking.configure(MlflowConfig("predict-keras"))
    with mlflow.start_run():
        info = model_logging.log_keras_model(*_model_and_spec(model_root))
    assert predict.main([videos(model_root, 1)[0], "--model", info.model_uri]) == 2
    assert "is not a video classifier" in capsys.readouterr().err


def _model_and_spec(model_root):
    import keras

    model_dir = model_root / "models"
    return keras.saving.load_model(str(model_dir / "model.keras")), records.read_spec(str(model_dir))
