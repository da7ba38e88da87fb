"""The model card: a Markdown description of a run's model, from what the run knows.

What the model takes (a video, sampled as T frames at F fps, H×W), how to call ``predict`` and
the served endpoint, its classes, the data (records hash, clips and videos per split and
class, preprocessing failures), the test metrics (video accuracy with its 95 % Wilson interval,
the majority baseline, balanced accuracy, per-class scores of videos, clip accuracy, shuffled
and reversed frames, and evaluate's warning when the model does not beat the baseline), the
registry decision and its reason, and the git commit.

:func:`card_facts` reads it all from the run (its spec artifact, tags, dataset inputs, metrics,
errors summary); :func:`render` writes the Markdown (pure). It becomes the run's description
(the ``mlflow.note.content`` tag, :func:`describe_run`) and, at registration, the version's
and the registered model's description (:mod:`training.tracking.registry`). Sections that are
not known yet (no evaluation, no registration) are left out. MLflow stores at most 5000
characters of a registry description: a longer card drops its per-class tables first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import mlflow

from pipeline import records
from pipeline.records import DatasetSpec
from training.tracking.model_logging import KERAS_MODEL, PYFUNC_MODEL, logged_model_names

logger = logging.getLogger(__name__)

NOTE_TAG = "mlflow.note.content"  # the run description the MLflow UI shows and edits
MAX_CHARS = 5000  # registered model / version description column (mlflow model_registry dbmodels)
ERRORS_SUMMARY = "preprocessing/errors_summary.json"
SERVE_PORT = 5001
RECORD_ARTIFACT = "registry/{name}-v{version}.json"  # a version's registry record in its run (training.tracking.registry)
BASELINE_WARNING_TAG = "vidseq.evaluate.baseline_warning"  # set by evaluate when the model does not beat the baseline
HEADLINE = (
    ("video_accuracy", "video accuracy (clip probabilities averaged per video)"),
    ("video_accuracy_ci", "video accuracy, 95 % interval (Wilson score interval over the {videos} videos)"),
    ("majority_baseline", "majority baseline: always answering `{majority}` (its share of the videos)"),
    ("video_balanced_accuracy", "balanced video accuracy (mean of the per-class recalls)"),
    ("video_macro_f1", "macro F1 (videos)"),
    ("accuracy", "clip accuracy"),
    ("balanced_accuracy", "balanced clip accuracy"),
    ("macro_f1", "macro F1 (clips)"),
    ("shuffled_accuracy", "accuracy, frames shuffled in time"),
    ("shuffled_video_accuracy", "video accuracy, frames shuffled in time"),
    ("reversed_accuracy", "accuracy, frames reversed"),
)


def card_facts(run_id: str, spec: DatasetSpec, *, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the card states, read from the run (and the registry record, if registered)."""
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    prefix = "test_"
    metrics = {k[len(prefix) :]: v for k, v in run.data.metrics.items() if k.startswith(prefix)}
    splits: dict[str, Any] = {}
    for item in (run.inputs.dataset_inputs if run.inputs else None) or []:
        try:
            profile = json.loads(item.dataset.profile or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(profile, dict) and profile.get("split"):
            splits[profile["split"]] = profile
    errors = None
    try:
        errors = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{ERRORS_SUMMARY}")
    except Exception:  # noqa: BLE001 - a run logged without records has no summary
        count = run.data.metrics.get("preprocess_errors")
        errors = None if count is None else {"count": int(count), "by_reason": {}}
    return {
        "run_id": run_id,
        "run_name": run.info.run_name,
        "tags": dict(run.data.tags),
        "spec": spec,
        "metrics": metrics,
        "splits": splits,
        "errors": errors,
        "record": dict(record) if record else None,
    }


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _model_uri(facts: Mapping[str, Any], model_name: str | None) -> str:
    record = facts.get("record")
    if record:
        return f"models:/{record['model_name']}/{record['version']}"
    return f"models:/{model_name}@champion" if model_name else f"runs:/{facts['run_id']}/video_classifier"


def _input_section(spec: DatasetSpec, uri: str) -> list[str]:
    sampling = spec.sampling or {}
    t, h, w, c = spec.clip_shape
    how = sampling.get("sampling", "uniform")
    if how == "sliding":
        clips = f"a clip every {sampling.get('clip_stride', '?')} frames"
    else:
        clips = f"{sampling.get('clips_per_video', '?')} clips spread over the video"
    return [
        "## What it takes",
        "",
        f"A **video file** (any container and codec FFmpeg reads). It is resampled to **{sampling.get('fps', '?')} fps** "
        f"and cut into {clips}, each **T={t} frames of {h}×{w}** ({c} channels, {sampling.get('resize', 'crop')} "
        "to the aspect), exactly as preprocessing made the training clips; the clips' class probabilities "
        f"are averaged into the video's. The Keras model inside takes clips `(batch, {t}, {h}, {w}, {c})` float32 in [0, 1].",
        "",
        "## How to call it",
        "",
        "```bash",
        f"python -m training.predict --model {uri} video.mp4",
        f"mlflow models serve -m {uri} --env-manager local --host 127.0.0.1 --port {SERVE_PORT}",
        f"curl -s http://127.0.0.1:{SERVE_PORT}/invocations -H 'Content-Type: application/json' \\",
        '  -d "{\\"dataframe_records\\": [{\\"video\\": \\"$(base64 -w0 video.mp4)\\"}]}"',
        "```",
        "",
        "One answer per video: `label`, `probabilities` (per class), `clips`, `error` (a video that cannot be read).",
        "",
    ]


def majority_class(metrics: Mapping[str, Any], classes: Any) -> str | None:
    """The class the majority baseline answers: the most ``video_support_<class>`` (the first on a tie)."""
    support = [(metrics.get(f"video_support_{name}"), i, name) for i, name in enumerate(classes)]
    known = [(value, -i, name) for value, i, name in support if value is not None]
    return max(known)[2] if known else None


def _metric_rows(metrics: Mapping[str, Any], classes: Any) -> list[str]:
    values = dict(metrics)
    if "video_accuracy_ci_low" in metrics and "video_accuracy_ci_high" in metrics:
        values["video_accuracy_ci"] = f"{metrics['video_accuracy_ci_low']:.4f}-{metrics['video_accuracy_ci_high']:.4f}"
    names = {"videos": int(metrics["videos"]) if "videos" in metrics else "?",
             "majority": majority_class(metrics, classes) or "the commonest class"}  # fmt: skip
    return [f"| {label.format(**names)} | {_number(values[key])} |" for key, label in HEADLINE if key in values]


def _metrics_section(facts: Mapping[str, Any], per_class: bool) -> list[str]:
    metrics, spec = facts["metrics"], facts["spec"]
    if not metrics:
        return []
    split = facts["tags"].get("vidseq.evaluate.split", "test")
    size = ""
    if "clips" in metrics and "videos" in metrics:
        size = f": {int(metrics['clips'])} clips of {int(metrics['videos'])} videos"
    lines = [f"## Test metrics ({split} split{size})", ""]
    warning = facts["tags"].get(BASELINE_WARNING_TAG)
    if warning:
        lines += [f"**Warning**: {warning}.", ""]
    lines += ["| metric | value |", "|---|---|", *_metric_rows(metrics, spec.classes)]
    if per_class and any(f"video_f1_{name}" in metrics for name in spec.classes):
        lines += ["", "Per class, of videos (clip F1 beside):", "",
                  "| class | videos | precision | recall | F1 | clip F1 |", "|---|---|---|---|---|---|"]  # fmt: skip
        for name in spec.classes:
            support = metrics.get(f"video_support_{name}")
            values = [_number(metrics.get(f"video_{key}_{name}", float("nan"))) for key in ("precision", "recall", "f1")]
            values.append(_number(metrics.get(f"f1_{name}", float("nan"))))
            lines.append(f"| {name} | {'?' if support is None else int(support)} | {' | '.join(values)} |")
    elif per_class and any(f"f1_{name}" in metrics for name in spec.classes):  # a run evaluated before video scores
        lines += ["", "| class | precision | recall | F1 |", "|---|---|---|---|"]
        for name in spec.classes:
            values = [_number(metrics.get(f"{key}_{name}", float("nan"))) for key in ("precision", "recall", "f1")]
            lines.append(f"| {name} | {' | '.join(values)} |")
    lines += ["", "A score means something only above the majority baseline, and on few videos only as far as "
              "its interval reaches. A model that uses motion loses accuracy on shuffled frames; the contact sheet "
              "and animation of test clips (worst misclassified first) are in the run's `evaluation/` artifacts.", ""]  # fmt: skip
    return lines


def _data_section(facts: Mapping[str, Any], per_class: bool) -> list[str]:
    tags, spec, splits = facts["tags"], facts["spec"], facts["splits"]
    path = tags.get("vidseq.records.path")
    md5 = tags.get("vidseq.records.dvc_md5")
    lines = ["## Data", ""]
    if path or md5:
        source = tags.get("vidseq.records.hash_source", "")
        lines.append(f"Records `{path or '?'}`, DVC hash `{md5 or 'unknown'}`" + (f" (from {source})" if md5 else "") + ".")
    if splits:
        order = [s for s in records.SPLITS if s in splits] + sorted(set(splits) - set(records.SPLITS))
        head = "| split | clips | videos |" + ("".join(f" {n} |" for n in spec.classes) if per_class else "")
        lines += ["", head, "|---|---|---|" + ("---|" * len(spec.classes) if per_class else "")]
        for split in order:
            profile = splits[split]
            row = f"| {split} | {profile.get('clips', '?')} | {profile.get('videos', '?')} |"
            if per_class:
                counts = profile.get("per_class") or {}
                row += "".join(
                    f" {counts.get(n, {}).get('clips', 0)} ({counts.get(n, {}).get('videos', 0)}) |" for n in spec.classes
                )
            lines.append(row)
        if per_class:
            lines += ["", "Per class: clips (videos)."]
    else:
        counted = ", ".join(f"{s} {v.get('clips', '?')} clips / {v.get('videos', '?')} videos" for s, v in spec.splits.items())
        lines += ["", f"Splits: {counted}."]
    errors = facts.get("errors")
    if errors is not None:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in (errors.get("by_reason") or {}).items())
        failed = f"{errors['count']} input videos gave no clip" + (f" ({reasons})" if reasons else "")
        lines += ["", f"Preprocessing failures: {failed if errors['count'] else 'none'}."]
    lines.append("")
    return lines


def _registry_section(record: Mapping[str, Any] | None) -> list[str]:
    if not record:
        return []
    aliases = ", ".join(f"`@{a}`" for a in record.get("aliases") or []) or "none"
    return [
        "## Registry decision",
        "",
        f"**{record['decision']}**: {record['reason']}. Aliases of v{record['version']}: {aliases}; "
        f"`{record['metric']}` {_number(record['value'])} (gate: `register.min_accuracy` {_number(record['min_accuracy'])}). "
        f"The full record is the run's artifact `{RECORD_ARTIFACT.format(name=record['model_name'], version=record['version'])}`.",
        "",
    ]


def _code_section(facts: Mapping[str, Any]) -> list[str]:
    tags = facts["tags"]
    commit = tags.get("mlflow.source.git.commit")
    lines = ["## Code and run", ""]
    if commit:
        dirty = " (with uncommitted changes)" if tags.get("vidseq.git.dirty") == "true" else ""
        lines.append(f"Git commit `{commit}`{dirty}.")
    run = f"MLflow run `{facts['run_name']}` (`{facts['run_id']}`)"
    if tags.get("vidseq.dvc.experiment"):
        run += f", DVC experiment `{tags['vidseq.dvc.experiment']}`"
    if tags.get("vidseq.dvc.baseline"):
        run += f" on baseline `{tags['vidseq.dvc.baseline'][:12]}`"
    lines += [run + ".", ""]
    return lines


def render(facts: Mapping[str, Any], *, model_name: str | None = None, per_class: bool = True) -> str:
    """The card as Markdown; without ``per_class`` tables if it would exceed :data:`MAX_CHARS`."""
    spec: DatasetSpec = facts["spec"]
    record = facts.get("record")
    title = f"{record['model_name']} v{record['version']}" if record else f"run {facts['run_name']}"
    lines = [
        f"# {title}: CNN-LSTM video classifier, {spec.num_classes} classes",
        "",
        f"**Classes** (label order): {', '.join(f'`{name}`' for name in spec.classes)}.",
        "",
    ]
    lines += _registry_section(record)
    lines += _input_section(spec, _model_uri(facts, model_name))
    lines += _metrics_section(facts, per_class)
    lines += _data_section(facts, per_class)
    lines += _code_section(facts)
    text = "\n".join(lines).rstrip() + "\n"
    if len(text) > MAX_CHARS and per_class:
        return render(facts, model_name=model_name, per_class=False)
    return text[:MAX_CHARS]


def logged_model_head(name: str, spec: DatasetSpec) -> str:
    """The line that says which of the run's models a logged model's description is about."""
    t, h, w, c = spec.clip_shape
    if name == KERAS_MODEL:
        return (f"**`{KERAS_MODEL}`**: the Keras model alone: clips `(batch, {t}, {h}, {w}, {c})` float32 in [0, 1] "
                f"-> class probabilities `(batch, {spec.num_classes})`. To classify a video, use `{PYFUNC_MODEL}` "
                "(the servable model of the same run), which samples the clips as preprocessing did.")  # fmt: skip
    if name == PYFUNC_MODEL:
        return f"**`{PYFUNC_MODEL}`**: the servable model: a video in, its label and class probabilities out."
    return f"**`{name}`**, logged by this run."


def describe_logged_models(run_id: str, spec: DatasetSpec, card: str) -> dict[str, str]:
    """Sets the card, headed by :func:`logged_model_head`, as each logged model's description; ``{name: text}``.

    The logged model page shows its ``mlflow.note.content`` tag as "Description", as the run page does.
    """
    client = mlflow.MlflowClient()
    described = {}
    for name, model_id in logged_model_names(run_id).items():
        text = f"{logged_model_head(name, spec)}\n\n{card}"
        client.set_logged_model_tags(model_id, {NOTE_TAG: text})
        described[name] = text
    return described


def describe_run(run_id: str, spec: DatasetSpec, *, record: Mapping[str, Any] | None = None,
                 model_name: str | None = None) -> str:  # fmt: skip
    """Sets the card as the run's description (``mlflow.note.content``) and its logged models'; returns it."""
    text = render(card_facts(run_id, spec, record=record), model_name=model_name)
    mlflow.MlflowClient().set_tag(run_id, NOTE_TAG, text)
    describe_logged_models(run_id, spec, text)
    return text

