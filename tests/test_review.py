"""A reviewer can judge a model from MLflow alone: run names, datasets, model card, pictures, the model's metrics.

One tiny trained model is tracked end to end (train, evaluate, register) into a private store,
then read back with ``MlflowClient`` as the UI reads it.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading

import mlflow
import pytest
import yaml
from orchestration_fixtures import TINY_PARAMS, copy_model_dir
from PIL import Image

from pipeline import records
from training.tracking import datasets, model_card, model_logging, naming, registry, review, runs
from vidseq.params import MlflowConfig, Params, RegisterConfig

EXPERIMENT = "review-test"
MODEL = "review-model"


@pytest.fixture(scope="module")
def tracked(model_root, tmp_path_factory):
    """``(run_id, record, model_root, model_dir)`` after train, evaluate and register were tracked."""
    folder = tmp_path_factory.mktemp("review")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        for name in (naming.DVC_EXP_NAME, naming.DVC_EXP_BASELINE_REV):
            patch.delenv(name, raising=False)
        model_dir = copy_model_dir(model_root, folder / "models")
        params = yaml.safe_load(yaml.safe_dump(TINY_PARAMS))
        params["data"]["records_dir"] = str(model_root / "records")
        params["data"]["raw_dir"] = str(model_root / "demo")
        run_id = runs.track_training(str(model_dir), params, records_dir=str(model_root / "records"),
                                     config=MlflowConfig(EXPERIMENT))  # fmt: skip
        metrics_path = str(model_root / "reports" / "metrics.json")
        runs.track_evaluation(str(model_dir), metrics_path, params={"evaluate": {"batch_size": 8}},
                              records_dir=str(model_root / "records"), split="test")  # fmt: skip
        record = registry.register(
            str(model_dir), metrics_path, str(folder / "registry.json"),
            register_cfg=RegisterConfig(model_name=MODEL, min_accuracy=0.0), mlflow_cfg=MlflowConfig(EXPERIMENT),
            params=Params.from_dict(params),
        )  # fmt: skip
        yield run_id, record, model_root, model_dir, mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")


def test_run_is_named_commit_dataset_number_and_the_experiment_opens_on_model_training(tracked):
    run_id, _, _, _, client = tracked
    run = client.get_run(run_id)
    sha = run.data.tags["mlflow.source.git.commit"]
    assert run.info.run_name == f"{sha[:7]}-demo-1"
    assert run.data.tags[naming.DATASET_TAG] == "demo"
    assert naming.EXPERIMENT_TAG not in run.data.tags
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_the_next_run_counts_up_and_a_dvc_experiment_names_its_run(model_root, store, tmp_path, monkeypatch):
    spec = records.read_spec(str(model_root / "models"))
    params = {"data": {"raw_dir": "data/demo", "records_dir": "data/records"}}
    names = []
    for _ in range(2):
        with runs.start_run(str(tmp_path / "out"), params, spec, config=MlflowConfig("naming")) as active:
            names.append(active.info.run_name)
    assert [n.rsplit("-", 1)[1] for n in names] == ["1", "2"] and names[0].rsplit("-", 1)[0] == names[1].rsplit("-", 1)[0]
    monkeypatch.setenv(naming.DVC_EXP_NAME, "fuzzy-lamb")
    monkeypatch.setenv(naming.DVC_EXP_BASELINE_REV, "0123456789abcdef")
    with runs.start_run(str(tmp_path / "out"), params, spec, config=MlflowConfig("naming")) as active:
        run = mlflow.MlflowClient().get_run(active.info.run_id)
    assert run.info.run_name == "fuzzy-lamb"
    assert run.data.tags[naming.EXPERIMENT_TAG] == "fuzzy-lamb"
    assert run.data.tags[naming.BASELINE_TAG] == "0123456789abcdef"


def test_on_a_sqlite_store_runs_are_counted_and_created_under_its_lock(model_root, store, tmp_path, monkeypatch):
    import fcntl

    spec = records.read_spec(str(model_root / "models"))
    real = naming.next_run_name
    held = []

    def count(*args):
        with open(store[len("sqlite:///") :], "rb") as other:  # another process's view of the lock
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(False)
                fcntl.flock(other, fcntl.LOCK_UN)
            except BlockingIOError:
                held.append(True)
        return real(*args)

    monkeypatch.setattr(naming, "next_run_name", count)
    with runs.start_run(str(tmp_path / "out"), {}, spec, config=MlflowConfig("locked")) as active:
        assert mlflow.MlflowClient().get_run(active.info.run_id).info.run_name.endswith("-1")
    assert held and held[0] is True


def test_runs_that_took_one_name_together_settle_on_distinct_names(store):
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("together")
    prefix = "abc1234-demo"
    made = [client.create_run(experiment_id, run_name=f"{prefix}-1").info.run_id for _ in range(4)]  # the race's outcome
    names, failures = {}, []
    start = threading.Barrier(len(made))

    def settle(run_id):
        try:
            start.wait(timeout=60)
            names[run_id] = naming.settle_run_name(client, experiment_id, run_id, prefix)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=settle, args=(run_id,)) for run_id in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert len(set(names.values())) == len(made)
    assert {client.get_run(run_id).info.run_name for run_id in made} == set(names.values())
    assert all(re.fullmatch(re.escape(prefix) + r"-\d+", name) for name in names.values())


def test_the_seeded_rng_does_not_name_the_runs(model_root, store, tmp_path):
    import random

    spec = records.read_spec(str(model_root / "models"))
    names = set()
    for _ in range(2):
        random.seed(0)  # what training does before the run starts
        with runs.start_run(str(tmp_path / "out"), {}, spec, config=MlflowConfig("seeded")) as active:
            names.add(active.info.run_name)
    assert len(names) == 2


def test_the_records_are_the_runs_training_validation_and_evaluation_inputs(tracked):
    run_id, _, root, _, client = tracked
    run = client.get_run(run_id)
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"demo-train", "demo-val", "demo-test"}
    contexts = {name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in inputs.items()}
    assert contexts == {"demo-train": "training", "demo-val": "validation", "demo-test": "evaluation"}
    spec = records.read_spec(str(root / "records"))
    md5 = run.data.tags["vidseq.records.dvc_md5"]
    for split in ("train", "val", "test"):
        dataset = inputs[f"demo-{split}"].dataset
        assert dataset.digest == md5
        assert json.loads(dataset.source)["uri"].endswith(str(root / "records"))
        profile = json.loads(dataset.profile)
        assert profile["clips"] == spec.splits[split]["clips"] and profile["videos"] == spec.splits[split]["videos"]
        assert set(profile["per_class"]) == set(spec.classes) and profile["classes"] == list(spec.classes)
        assert sum(c["clips"] for c in profile["per_class"].values()) == profile["clips"]
        assert profile["clip_shape"].startswith("x".join(map(str, spec.clip_shape)))
        fields = [c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]]
        assert fields[:2] == [records.FRAMES, records.LABEL]


def test_the_logged_models_carry_the_evaluated_metrics(tracked):
    run_id, _, root, _, client = tracked
    mlflow.set_tracking_uri(client.tracking_uri)
    expected = json.load(open(root / "reports" / "metrics.json"))
    names = model_logging.logged_model_names(run_id)
    assert set(names) == {"keras_model", "video_classifier"}
    for model_id in names.values():
        metrics = {m.key: m.value for m in client.get_logged_model(model_id).metrics}
        assert metrics["test_video_accuracy"] == expected["video_accuracy"]
        assert metrics["test_accuracy"] == expected["accuracy"]
        assert metrics["test_macro_f1"] == expected["macro_f1"]
        assert len([m for m in client.get_logged_model(model_id).metrics if m.key == "test_accuracy"]) == 1
        assert {m.dataset_name for m in client.get_logged_model(model_id).metrics if m.key.startswith("test_")} == {
            "demo-test"
        }  # the model page's "Datasets used"
    # the run's test metrics are single values, not series
    assert len(client.get_metric_history(run_id, "test_video_accuracy")) == 1
    assert len(client.get_metric_history(run_id, "test_accuracy")) == 1


def test_evaluating_again_logs_no_second_value(tracked, monkeypatch):
    run_id, _, root, model_dir, client = tracked
    monkeypatch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
    mlflow.set_tracking_uri(client.tracking_uri)
    with runs.resume_run(str(model_dir)):
        runs.log_evaluation(str(root / "reports" / "metrics.json"))
    assert len(client.get_metric_history(run_id, "test_video_accuracy")) == 1
    for model_id in model_logging.logged_model_names(run_id).values():
        assert len([m for m in client.get_logged_model(model_id).metrics if m.key == "test_video_accuracy"]) == 1


def test_run_version_and_model_descriptions_are_the_model_card(tracked):
    run_id, record, root, _, client = tracked
    metrics = json.load(open(root / "reports" / "metrics.json"))
    spec = records.read_spec(str(root / "records"))
    note = client.get_run(run_id).data.tags[model_card.NOTE_TAG]
    version = client.get_model_version(MODEL, str(record["version"]))
    model = client.get_registered_model(MODEL)
    assert version.description == note and model.description == note  # the first version is the champion
    t, h, w, _ = spec.clip_shape
    for text in (f"T={t} frames of {h}×{w}", f"{spec.sampling['fps']} fps", f"models:/{MODEL}/{record['version']}",
                 "/invocations", "python -m training.predict", f"{metrics['video_accuracy']:.4f}",
                 f"{metrics['shuffled_accuracy']:.4f}", f"{metrics['reversed_accuracy']:.4f}",
                 client.get_run(run_id).data.tags["vidseq.records.dvc_md5"],
                 client.get_run(run_id).data.tags["mlflow.source.git.commit"], record["reason"],
                 "Preprocessing failures", f"{metrics['majority_baseline']:.4f}",
                 f"always answering `{metrics['majority_class']}`",
                 f"{metrics['video_accuracy_ci_low']:.4f}-{metrics['video_accuracy_ci_high']:.4f}",
                 f"Wilson score interval over the {metrics['videos']} videos",
                 f"{metrics['video_balanced_accuracy']:.4f}"):  # fmt: skip
        assert text in note, text
    assert "chance" not in note
    for name in spec.classes:
        assert f"| {name} | " in note  # per-class F1 and per-class counts
    assert len(note) <= model_card.MAX_CHARS
    logged = model_logging.logged_model_names(run_id)
    assert set(logged) == {model_logging.KERAS_MODEL, model_logging.PYFUNC_MODEL}
    for name, model_id in logged.items():  # the logged model pages: "Description"
        text = client.get_logged_model(model_id).tags[model_card.NOTE_TAG]
        head, card = text.split("\n\n", 1)
        assert head.startswith(f"**`{name}`**") and card == note
    keras_head = client.get_logged_model(logged[model_logging.KERAS_MODEL]).tags[model_card.NOTE_TAG].split("\n\n")[0]
    assert f"(batch, {t}, {h}, {w}, 3)" in keras_head and model_logging.PYFUNC_MODEL in keras_head
    assert version.source == f"models:/{logged[model_logging.PYFUNC_MODEL]}"  # the version's model is described


def test_the_registry_record_is_an_artifact_and_tags_stay_short(tracked):
    run_id, record, _, _, client = tracked
    version = client.get_model_version(MODEL, str(record["version"]))
    assert "vidseq.registry" not in version.tags
    assert version.tags["vidseq.record"] == f"runs:/{run_id}/registry/{MODEL}-v{record['version']}.json"
    assert all(len(value) < 500 for value in version.tags.values())
    artifacts = client.get_run(run_id).info.artifact_uri
    for path in ("registry.json", f"registry/{MODEL}-v{record['version']}.json"):
        assert mlflow.artifacts.load_dict(f"{artifacts}/{path}") == record


def _image(client, run_id, path):
    local = client.download_artifacts(run_id, path)
    with open(local, "rb") as handle:
        image = Image.open(io.BytesIO(handle.read()))
        image.load()
    return image


def test_the_pictures_open_as_images(tracked):
    run_id, _, root, _, client = tracked
    spec = records.read_spec(str(root / "records"))
    evaluation = {a.path for a in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/test_clips.png", "evaluation/test_clips.gif",
            "evaluation/per_class_table.json"} <= evaluation  # fmt: skip
    sheet = _image(client, run_id, "evaluation/test_clips.png")
    assert sheet.format == "PNG" and sheet.width >= spec.sequence_length * spec.width
    gif = _image(client, run_id, "evaluation/test_clips.gif")
    assert gif.format == "GIF" and gif.n_frames == spec.sequence_length
    assert _image(client, run_id, "evaluation/confusion_matrix.png").format == "PNG"
    table = json.load(open(client.download_artifacts(run_id, "evaluation/per_class_table.json")))
    assert table["columns"] == ["class", "precision", "recall", "f1", "support",
                                "video_precision", "video_recall", "video_f1", "video_support"]  # fmt: skip
    assert [row[0] for row in table["data"]] == list(spec.classes)
    assert all(isinstance(row[4], int) and isinstance(row[8], int) for row in table["data"])
    summary = open(client.download_artifacts(run_id, "training/model_summary.txt")).read()
    assert "total parameters" in summary and "lstm" in summary.lower()


def test_the_sheet_shows_the_most_confident_mistakes_first_then_each_class():
    rows = [
        review.Prediction(0, "a1", "A", "A", 0.9), review.Prediction(1, "a2", "A", "B", 0.6),
        review.Prediction(2, "b1", "B", "A", 0.8), review.Prediction(3, "b2", "B", "B", 0.7),
        review.Prediction(4, "b3", "B", "B", 0.5), review.Prediction(5, "b1", "B", "B", 0.4),
    ]  # fmt: skip
    chosen = review.pick(rows, ["A", "B"])
    assert [p.index for p in chosen] == [2, 1, 0, 4]  # mistakes by confidence, then the least sure right one per class
    assert [p.index for p in review.pick(rows, ["A", "B"], count=1)] == [2]


def test_clips_that_no_longer_match_predictions_are_an_error(model_root):
    spec = records.read_spec(str(model_root / "records"))
    wrong = [review.Prediction(0, "not-a-video", "A", "A", 1.0)]
    with pytest.raises(ValueError, match="evaluate again"):
        review.read_clips(str(model_root / "records"), spec, "test", wrong)


def test_dataset_name_is_the_videos_folder_of_the_default_records_else_the_records_folder():
    params = {"data": {"raw_dir": "data/ucf101", "records_dir": "data/records"}}
    assert naming.dataset_name("data/records", params) == "ucf101"
    assert naming.dataset_name("/mnt/other/kinetics_records/", params) == "kinetics_records"
    assert naming.dataset_name(None, params) == "ucf101"


def test_split_datasets_have_the_dvc_hash_as_digest(model_root):
    spec = records.read_spec(str(model_root / "records"))
    counts = datasets.split_counts(str(model_root / "records"), spec, "train")
    dataset = datasets.split_dataset(str(model_root / "records"), spec, "train", counts, name="demo", digest="ab" * 16 + ".dir")
    entity = dataset._to_mlflow_entity()
    assert entity.digest == "ab" * 16 + ".dir" and entity.name == "demo-train"
    assert json.loads(entity.profile)["clips"] == spec.splits["train"]["clips"]
    assert os.path.isabs(json.loads(entity.source)["uri"].replace("file://", ""))


def test_the_confusion_png_has_a_title_and_the_dvc_plot_axes(tmp_path, monkeypatch):
    import matplotlib.figure
    import numpy as np

    from training.metrics import confusion_title, plot_confusion

    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    cm = np.array([[3, 1, 0], [0, 2, 0], [0, 0, 4]])  # cm[actual, predicted]: one "a" clip predicted as "b"
    title = confusion_title("clip", "test", 0.9, int(cm.sum()))
    plot_confusion(cm, ["a", "b", "c"], str(tmp_path / "cm.png"), title=title)
    ax = saved[0].axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("actual", "predicted")  # as dvc.yaml: x actual, y predicted
    assert ax.get_title() == title == "Confusion matrix: 10 test clips, clip accuracy 0.900"
    drawn = np.asarray(ax.images[0].get_array())
    assert drawn[1, 0] == 1  # row = predicted "b", column = actual "a"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_the_animation_has_one_frame_per_time_step_at_the_records_fps(tmp_path):
    import numpy as np

    spec = records.DatasetSpec(sequence_length=4, height=8, width=8, channels=3, frame_encoding="png",
                               classes=("A", "B"), sampling={"fps": 5.0})  # fmt: skip
    rows = [review.Prediction(0, "v1", "A", "B", 0.9), review.Prediction(1, "v2", "B", "B", 0.8)]
    clips = {i: np.full((4, 8, 8, 3), 40 * i, np.uint8) for i in range(2)}
    frames = review.animation_frames(rows, clips, spec)
    review.write_gif(frames, str(tmp_path / "a.gif"), 5.0)
    gif = Image.open(tmp_path / "a.gif")
    assert gif.n_frames == 4 and gif.info["duration"] == 200 and gif.info["loop"] == 0


CARD_METRICS = {
    "video_accuracy": 0.625, "video_accuracy_ci_low": 0.5025, "video_accuracy_ci_high": 0.7333,
    "majority_baseline": 0.625, "video_balanced_accuracy": 0.5, "accuracy": 0.61, "clips": 192, "videos": 64,
    "video_support_fight": 24, "video_support_noFight": 40, "video_precision_fight": 0.0, "video_recall_fight": 0.0,
    "video_f1_fight": 0.0, "video_precision_noFight": 0.625, "video_recall_noFight": 1.0, "video_f1_noFight": 0.7692,
    "f1_fight": 0.1, "f1_noFight": 0.75,
}  # fmt: skip


def _card(metrics, tags=None):
    spec = records.DatasetSpec(sequence_length=4, height=8, width=8, channels=3, frame_encoding="jpeg",
                               classes=("fight", "noFight"), sampling={"fps": 8.0})  # fmt: skip
    facts = {"run_id": "r1", "run_name": "abc-fight-1", "tags": tags or {}, "spec": spec, "metrics": metrics,
             "splits": {}, "errors": None, "record": None}  # fmt: skip
    return model_card.render(facts, model_name="fight")


def test_the_card_states_the_baseline_the_interval_and_per_class_video_scores():
    card = _card(CARD_METRICS)
    assert "| video accuracy, 95 % interval (Wilson score interval over the 64 videos) | 0.5025-0.7333 |" in card
    assert "| majority baseline: always answering `noFight` (its share of the videos) | 0.6250 |" in card
    assert "| balanced video accuracy (mean of the per-class recalls) | 0.5000 |" in card
    assert "| class | videos | precision | recall | F1 | clip F1 |" in card
    assert "| noFight | 40 | 0.6250 | 1.0000 | 0.7692 | 0.7500 |" in card
    assert "| fight | 24 | 0.0000 | 0.0000 | 0.0000 | 0.1000 |" in card
    assert "**Warning**" not in card and "chance" not in card


def test_the_card_shows_evaluates_warning():
    text = "video accuracy 0.625 does not beat the majority baseline 0.625"
    card = _card(CARD_METRICS, {model_card.BASELINE_WARNING_TAG: text})
    assert f"**Warning**: {text}." in card
    assert card.index("**Warning**") < card.index("| metric | value |")


def test_majority_class_is_the_class_with_most_test_videos_the_first_on_a_tie():
    assert model_card.majority_class(CARD_METRICS, ("fight", "noFight")) == "noFight"
    assert model_card.majority_class({"video_support_a": 2, "video_support_b": 2}, ("a", "b")) == "a"
    assert model_card.majority_class({"accuracy": 0.5}, ("a", "b")) is None


def test_evaluate_sets_and_clears_the_baseline_warning_of_the_run(tracked):
    run_id, _, root, model_dir, client = tracked
    metrics_path = str(root / "reports" / "metrics.json")
    mlflow.set_tracking_uri(client.tracking_uri)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", client.tracking_uri)
        runs.track_evaluation(str(model_dir), metrics_path, warning="does not beat the majority baseline")
        tags = client.get_run(run_id).data.tags
        assert tags[model_card.BASELINE_WARNING_TAG] == "does not beat the majority baseline"
        assert "**Warning**: does not beat the majority baseline." in tags[model_card.NOTE_TAG]
        runs.track_evaluation(str(model_dir), metrics_path)
        tags = client.get_run(run_id).data.tags
        assert model_card.BASELINE_WARNING_TAG not in tags and "**Warning**" not in tags[model_card.NOTE_TAG]
