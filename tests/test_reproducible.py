"""Tests that training is reproducible: the same records and params give byte-identical outputs (DVC hashes)."""

from __future__ import annotations

import time
import zipfile

import keras
from orchestration_fixtures import TINY_PARAMS

from training.fit import train
from training.model import ZIP_TIME, load_keras_model, save_model
from vidseq.params import ModelConfig, TrainConfig
from vidseq.validation import from_mapping

OUTPUTS = ("model.keras", "history.json", "history.csv", "dataset.json", "training_curves.png")


def test_a_saved_model_has_no_save_time(tmp_path, monkeypatch):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now)
    save_model(model, str(tmp_path / "a.keras"))
    monkeypatch.setattr(time, "time", lambda: now + 3 * 86400)  # three days later
    save_model(model, str(tmp_path / "b.keras"))
    assert (tmp_path / "a.keras").read_bytes() == (tmp_path / "b.keras").read_bytes()
    with zipfile.ZipFile(tmp_path / "a.keras") as archive:
        assert {info.date_time for info in archive.infolist()} == {ZIP_TIME}
        assert b"date_saved" not in archive.read("metadata.json")
    loaded = load_keras_model(str(tmp_path / "a.keras"))
    assert [w.tolist() for w in loaded.get_weights()] == [w.tolist() for w in model.get_weights()]


def test_training_twice_on_the_same_records_writes_the_same_bytes(model_root, tmp_path):
    model_cfg = from_mapping(ModelConfig, TINY_PARAMS["model"], "model")
    train_cfg = from_mapping(TrainConfig, {**TINY_PARAMS["train"], "epochs": 2}, "train")
    results = []
    for name in ("first", "second"):
        keras.backend.clear_session()  # layer and optimizer names restart, as in a new process
        results.append(train(str(model_root / "records"), str(tmp_path / name), model_cfg, train_cfg))
    loaded = load_keras_model(str(tmp_path / "first" / "model.keras"))  # the renumbered config still loads
    assert [w.tolist() for w in loaded.get_weights()] == [w.tolist() for w in results[0].model.get_weights()]
    for output in OUTPUTS:
        assert (tmp_path / "first" / output).read_bytes() == (tmp_path / "second" / output).read_bytes(), output
