"""Tests of training.serving: the pyfunc in-process and behind a real ``mlflow models serve``."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import mlflow
import pandas as pd
import pytest
from orchestration_fixtures import BIN, TINY_PARAMS, copy_model_dir, register_champion, running_server, tool_env, use_store
from servers import free_port

from pipeline.video import VideoError
from training import serving, tracking
from training.orchestration_config import MlflowConfig


@pytest.fixture(scope="module")
def registered(model_root, tmp_path_factory):
    """``(store uri, folder)``: the tiny model registered as ``vidseq-cnn-lstm@champion``."""
    folder = tmp_path_factory.mktemp("serving-store")
    return register_champion(model_root, folder, "serving-test"), folder


def demo_videos(model_root):
    return sorted(str(p) for p in (model_root / "demo").rglob("*.*"))


def b64(path):
    return base64.b64encode(open(path, "rb").read()).decode("ascii")


def test_open_video_takes_paths_base64_data_urls_and_bytes(model_root, tmp_path):
    path = demo_videos(model_root)[0]
    assert serving.open_video(path) == (path, path)
    for value in (b64(path), "data:video/mp4;base64," + b64(path), open(path, "rb").read()):
        source, _ = serving.open_video(value)
        assert source.read() == open(path, "rb").read()
    for value in (str(tmp_path / "missing.mp4"), "", 42, None):
        with pytest.raises(VideoError) as error:
            serving.open_video(value)
        assert error.value.stage == "open"


def test_the_registered_pyfunc_answers_each_row_and_marks_bad_ones(model_root, registered, monkeypatch):
    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vidseq-cnn-lstm@champion")
    assert model.metadata.signature.inputs.input_names() == ["video"]
    videos = demo_videos(model_root)
    frame = pd.DataFrame({"video": [b64(videos[0]), videos[1], base64.b64encode(b"junk" * 50).decode(), "nope.mp4"]})
    out = model.predict(frame)
    assert list(out.columns) == list(serving.OUTPUT_COLUMNS) and len(out) == 4
    direct = serving.VideoClassifier.from_dir(str(model_root / "models"))
    for row, path in ((0, videos[0]), (1, videos[1])):
        assert out.loc[row, "error"] is None
        assert out.loc[row, "probabilities"] == pytest.approx(direct.classify(path)["probabilities"], abs=1e-6)
    assert out.loc[2, "error"].startswith("open: not a readable video file") and out.loc[2, "label"] is None
    assert out.loc[3, "error"].startswith("open: no such file, and not base64")


def test_mlflow_models_serve_answers_base64_and_path_rows(model_root, registered, tmp_path):
    uri, _ = registered
    port = free_port()
    videos = demo_videos(model_root)
    args = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/vidseq-cnn-lstm@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with running_server(args, port, tmp_path / "serve.log", tool_env(uri)):
        body = {"dataframe_records": [{"video": b64(videos[0])}, {"video": videos[1]}, {"video": "bm90IGEgdmlkZW8="}]}
        status, answer = post(port, body)
        assert status == 200, answer
        first, second, bad = answer["predictions"]
        assert first["error"] is None and second["error"] is None
        assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
        assert first["clips"] == TINY_PARAMS["preprocess"]["clips_per_video"]
        direct = serving.VideoClassifier.from_dir(str(model_root / "models")).classify(videos[0])
        assert first["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-6)
        assert bad["label"] is None and bad["error"].startswith("open: not a readable video file")

        status, answer = post(port, {"dataframe_records": [{"path": videos[0]}]})
        assert status == 400 and "video" in answer["message"]  # schema enforcement names the column


def post(port, body):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_a_model_without_sampling_parameters_cannot_be_logged(model_root, tmp_path, monkeypatch):
    from pipeline.records import ContractError

    model_dir = copy_model_dir(model_root, tmp_path / "models")
    spec = json.loads((model_dir / "dataset.json").read_text())
    (model_dir / "dataset.json").write_text(json.dumps({**spec, "sampling": {}}))
    use_store(monkeypatch, tmp_path)
    tracking.configure(MlflowConfig("serving-bad"))
    with mlflow.start_run(), pytest.raises(ContractError, match="no sampling parameters"):
        serving.log_video_classifier(str(model_dir))
