"""Tests of the served model (training.tracking.pyfunc over training.classifier): the pyfunc in-process and behind a real ``mlflow models serve``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pandas as pd
import pytest
from orchestration_fixtures import (
    BIN, REPO, TINY_PARAMS, copy_model_dir, read_only, register_champion, running_server, tool_env, use_store,
)  # fmt: skip
from servers import free_port

from pipeline.video import VideoError
from pipeline.writer import write_video
from training import video_input
from training.classifier import VideoClassifier
from training.tracking import pyfunc, runs
from training.limits import Limits
from vidseq.params import MlflowConfig


@pytest.fixture(scope="module")
def registered(model_root, tmp_path_factory):
    """``(store uri, folder)``: the tiny model registered as ``vidseq-cnn-lstm@champion``."""
    folder = tmp_path_factory.mktemp("serving-store")
    return register_champion(model_root, folder, "serving-test"), folder


def demo_videos(model_root):
    return sorted(str(p) for p in (model_root / "demo").rglob("*.*"))


def b64(path):
    return base64.b64encode(open(path, "rb").read()).decode("ascii")


def big_video(path, size=128):
    """A 128x128 mp4: over a 64x64 pixel limit."""
    frames = [np.full((size, size, 3), 10 * i, np.uint8) for i in range(12)]
    write_video(str(path), frames, 12, "mp4")
    return path


@pytest.fixture
def video_root(model_root, tmp_path):
    """An allowed folder with a video and a sub-folder, a FIFO and a symlink out of it; a secret beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    video = root / "sub" / "clip.mp4"
    video.write_bytes(open(demo_videos(model_root)[0], "rb").read())
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(video.read_bytes())
    os.mkfifo(root / "fifo.mp4")
    os.symlink(secret, root / "link.mp4")
    return root, video, secret


def test_open_video_takes_base64_data_urls_and_bytes_and_no_path_by_default(model_root, tmp_path):
    path = demo_videos(model_root)[0]
    for value in (b64(path), "data:video/mp4;base64," + b64(path), open(path, "rb").read()):
        source, _ = video_input.open_video(value)
        assert source.read() == open(path, "rb").read()
    for value in (path, str(tmp_path / "missing.mp4")):  # an existing and a missing file: one message
        with pytest.raises(VideoError) as error:
            video_input.open_video(value)
        assert (error.value.stage, error.value.reason) == ("open", video_input.PATH_ROWS_OFF)
    for value in ("", 42, None):
        with pytest.raises(VideoError) as error:
            video_input.open_video(value)
        assert error.value.stage == "open"


def test_path_rows_read_only_regular_files_inside_the_allowed_root(video_root, monkeypatch):
    root, video, secret = video_root
    monkeypatch.setenv(video_input.ALLOWED_ROOT_ENV, str(root))
    allowed = video_input.allowed_root()
    for value in (str(video), "sub/clip.mp4", "sub/../sub/clip.mp4"):
        source, _ = video_input.open_video(value, allowed)
        with source:
            assert source.read() == video.read_bytes()
    refused = [str(secret), "../secret.mp4", "sub/../../secret.mp4", "link.mp4",  # outside (also via a symlink)
               "missing.mp4", "sub", "fifo.mp4", "/dev/zero", "/etc/hostname"]  # fmt: skip
    for value in refused:  # missing, outside, not a regular file: the same message, and a FIFO does not block
        with pytest.raises(VideoError) as error:
            video_input.open_video(value, allowed)
        assert (error.value.stage, error.value.reason) == ("open", video_input.PATH_REFUSED), value


def test_the_registered_pyfunc_answers_each_row_and_marks_bad_ones(model_root, registered, monkeypatch):
    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv(video_input.ALLOWED_ROOT_ENV, str(model_root / "demo"))
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vidseq-cnn-lstm@champion")
    assert model.metadata.signature.inputs.input_names() == ["video"]
    videos = demo_videos(model_root)
    frame = pd.DataFrame({"video": [b64(videos[0]), videos[1], base64.b64encode(b"junk" * 50).decode(), "nope.mp4"]})
    out = model.predict(frame)
    assert list(out.columns) == list(pyfunc.OUTPUT_COLUMNS) and len(out) == 4
    direct = VideoClassifier.from_dir(str(model_root / "models"))
    for row, path in ((0, videos[0]), (1, videos[1])):
        assert out.loc[row, "error"] is None
        assert out.loc[row, "probabilities"] == pytest.approx(direct.classify(path)["probabilities"], abs=1e-6)
    assert out.loc[2, "error"].startswith("open: not a readable video file") and out.loc[2, "label"] is None
    assert out.loc[3, "error"] == f"open: {video_input.PATH_REFUSED}"


def test_the_pyfunc_reads_its_limits_from_the_environment_at_load_time(model_root, registered, tmp_path, monkeypatch):
    from mlflow.exceptions import MlflowException

    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    limits = {"MAX_ROWS": "3", "MAX_REQUEST_BYTES": "1000000", "MAX_PIXELS": "12000", "MAX_FRAMES": "100"}
    for name, value in limits.items():
        monkeypatch.setenv(f"VIDSEQ_{name}", value)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vidseq-cnn-lstm@champion")
    videos = demo_videos(model_root)
    long_avi = next(v for v in videos if v.endswith(".avi") and "c02" in v)  # 112 frames
    out = model.predict(pd.DataFrame({"video": [b64(videos[0]), b64(big_video(tmp_path / "big.mp4")), b64(long_avi)]}))
    assert out.loc[0, "error"] is None and out.loc[0, "label"]
    assert out.loc[1, "error"].startswith("limit: frames of 128x128") and "VIDSEQ_MAX_PIXELS" in out.loc[1, "error"]
    assert out.loc[2, "error"] == "limit: the video has more than 100 frames (VIDSEQ_MAX_FRAMES): send a shorter video"
    with pytest.raises(MlflowException, match="4 rows, over the limit of 3 .VIDSEQ_MAX_ROWS.") as error:
        model.predict(pd.DataFrame({"video": [b64(videos[0])] * 4}))
    assert error.value.get_http_status_code() == 429
    with pytest.raises(MlflowException, match="over the limit of 1000000 .VIDSEQ_MAX_REQUEST_BYTES.") as error:
        model.predict(pd.DataFrame({"video": ["A" * 1000004]}))
    assert error.value.get_http_status_code() == 429


def test_the_model_config_sets_limits_and_the_environment_wins(registered, monkeypatch):
    uri, _ = registered
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("VIDSEQ_MAX_FRAMES", "7")
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/vidseq-cnn-lstm@champion", model_config={"max_rows": 1, "max_frames": 99})
    limits = model.unwrap_python_model().limits
    assert (limits.max_rows, limits.max_frames, limits.max_pixels) == (1, 7, 4096 * 2160)


def test_a_video_over_its_decode_budget_gets_a_timeout_error(model_root):
    classifier = VideoClassifier.from_dir(str(model_root / "models"))
    video = b64(demo_videos(model_root)[0])
    row = classifier.classify_value(video, limits=classifier.limits.decode_limits(timeout_s=1e-6))
    assert row["error"] == "timeout: decoding took longer than 1e-06 s (VIDSEQ_DECODE_TIMEOUT_S)"
    assert classifier.classify_value(video)["error"] is None
    tight = VideoClassifier.from_dir(str(model_root / "models"), limits=Limits(request_timeout_s=1e-6))
    rows = tight.classify_values([video, video])  # the request's budget is spent: no row decodes for long
    assert [row["error"].split(":")[0] for row in rows] == ["timeout", "timeout"]
    assert all("(VIDSEQ_REQUEST_TIMEOUT_S)" in row["error"] for row in rows)


def test_a_damaged_model_keras_is_one_clear_error(model_root, tmp_path):
    from pipeline.records import ContractError

    model_dir = copy_model_dir(model_root, tmp_path / "models")
    keras_file = model_dir / "model.keras"
    keras_file.write_bytes(keras_file.read_bytes()[: keras_file.stat().st_size // 2])
    with pytest.raises(ContractError, match="model.keras is damaged .truncated.. or not a Keras .keras file"):
        VideoClassifier.from_dir(str(model_dir))


def serve_args(port):
    return [str(BIN / "mlflow"), "models", "serve", "-m", "models:/vidseq-cnn-lstm@champion",
            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def test_mlflow_models_serve_answers_base64_and_path_rows(model_root, registered, video_root, tmp_path):
    uri, _ = registered
    root, video, secret = video_root
    port = free_port()
    videos = demo_videos(model_root)
    env = {**tool_env(uri), video_input.ALLOWED_ROOT_ENV: str(root)}
    with running_server(serve_args(port), port, tmp_path / "serve.log", env):
        rows = [b64(videos[0]), "sub/clip.mp4", "bm90IGEgdmlkZW8="]
        status, answer = post(port, {"dataframe_records": [{"video": value} for value in rows]})
        assert status == 200, answer
        first, second, bad = answer["predictions"]
        assert first["error"] is None and second["error"] is None
        assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
        assert first["clips"] == TINY_PARAMS["preprocess"]["clips_per_video"]
        direct = VideoClassifier.from_dir(str(model_root / "models")).classify(videos[0])
        assert first["probabilities"] == pytest.approx(direct["probabilities"], abs=1e-6)
        assert bad["label"] is None and bad["error"].startswith("open: not a readable video file")

        refused = [str(secret), "../secret.mp4", "link.mp4", "missing.mp4", "sub", "fifo.mp4",
                   "/root/.bashrc", "/root/.bashrcX"]  # fmt: skip
        status, answer = post(port, {"dataframe_records": [{"video": value} for value in refused]})
        assert status == 200, answer
        assert [row["error"] for row in answer["predictions"]] == [f"open: {video_input.PATH_REFUSED}"] * len(refused)

        status, answer = post(port, {"dataframe_records": [{"path": videos[0]}]})
        assert status == 400 and "video" in answer["message"]  # schema enforcement names the column


def test_a_read_only_store_is_served_from_a_private_copy(model_root, registered, tmp_path):
    """mlflow models serve writes into a local store's model folder and fails when it is read-only;
    python -m training.serve downloads the model first, so the store is only read."""
    uri, folder = registered
    env = tool_env(uri)
    with read_only(str(folder)) as prefix:
        plain = subprocess.run([*prefix, *serve_args(free_port())], env=env, capture_output=True, text=True,
                               timeout=300)  # fmt: skip
        assert plain.returncode not in (0, 97, 98) and "Read-only file system" in plain.stderr, plain.stderr[-2000:]
        port = free_port()
        command = [*prefix, sys.executable, "-m", "training.serve", "--host", "127.0.0.1", "--port", str(port)]
        with running_server(command, port, tmp_path / "serve.log", {**env, "PYTHONPATH": str(REPO)}):
            status, answer = post(port, {"dataframe_records": [{"video": b64(demo_videos(model_root)[0])}]})
    assert status == 200, answer
    (row,) = answer["predictions"]
    assert row["error"] is None and row["label"] in row["probabilities"]
    assert not list(folder.rglob("write-probe"))


def test_served_limits_refuse_big_inputs_and_floods_quickly_and_normal_requests_still_pass(
    model_root, registered, tmp_path
):
    """Path rows are off by default; a row over a limit, a request over a limit and a flood are refused at
    once, and a normal request is answered afterwards."""
    uri, _ = registered
    port = free_port()
    videos = demo_videos(model_root)
    long_avi = b64(next(v for v in videos if v.endswith(".avi") and "c02" in v))
    limits = {"VIDSEQ_MAX_PIXELS": "12000", "VIDSEQ_MAX_ROWS": "8", "VIDSEQ_MAX_CONCURRENT": "1"}
    with running_server(serve_args(port), port, tmp_path / "serve.log", {**tool_env(uri), **limits}):
        rows = [videos[0], videos[0] + "X", b64(big_video(tmp_path / "big.mp4"))]
        status, answer = post(port, {"dataframe_records": [{"video": value} for value in rows]})
        assert status == 200, answer
        existing, missing, big = answer["predictions"]
        assert existing["error"] == missing["error"] == f"open: {video_input.PATH_ROWS_OFF}"  # no existence oracle
        assert big["error"].startswith("limit: frames of 128x128") and big["label"] is None

        status, answer = post(port, {"dataframe_records": [{"video": long_avi}] * 9})
        assert status == 429 and "over the limit of 8 (VIDSEQ_MAX_ROWS)" in answer["message"]

        flood = {"dataframe_records": [{"video": long_avi}] * 8}
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(port, flood, timeout=60), range(6)))
        statuses = sorted(status for status, _ in answers)
        assert 200 in statuses and 503 in statuses and set(statuses) <= {200, 503}, statuses
        assert all("busy: 1 request(s) already decoding" in a["message"] for status, a in answers if status == 503)

        status, answer = post(port, {"dataframe_records": [{"video": b64(videos[0])}]}, timeout=60)
        assert status == 200 and answer["predictions"][0]["error"] is None, answer


def post(port, body, timeout=120):
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_a_model_without_sampling_parameters_cannot_be_logged(model_root, tmp_path, monkeypatch):
    from pipeline.records import ContractError

    model_dir = copy_model_dir(model_root, tmp_path / "models")
    spec = json.loads((model_dir / "dataset.json").read_text())
    (model_dir / "dataset.json").write_text(json.dumps({**spec, "sampling": {}}))
    use_store(monkeypatch, tmp_path)
    runs.configure(MlflowConfig("serving-bad"))
    with mlflow.start_run(), pytest.raises(ContractError, match="no sampling parameters"):
        pyfunc.log_video_classifier(str(model_dir))
