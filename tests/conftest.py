"""Shared pytest set-up: tests never log into the user's MLflow store."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow_store(tmp_path_factory):
    """Points MLflow (in this process and in every subprocess) at a throw-away SQLite store."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """A tiny demo dataset, its records, an (untracked) trained model and its reports; built once."""
    from orchestration_fixtures import tiny_model

    return tiny_model(tmp_path_factory)


@pytest.fixture
def store(monkeypatch, tmp_path):
    """A private MLflow store for one test; returns its URI."""
    from orchestration_fixtures import use_store

    return use_store(monkeypatch, tmp_path)
