"""Benchmark: group k-fold cross-validation on real footage, the Surveillance Camera Fight Dataset, frozen MobileNetV2.

Usage::

    .venv/bin/python benchmarks/real_footage.py FOLDER [--folds 5] [--seed 0] [--work DIR]
                                                [--backbone ../shared/backbones/mobilenet_v2_imagenet.keras]

FOLDER is the dataset's folder (public repository ``seymanurakti/fight-detection-surv-dataset``):
``fight/*.mp4``, ``noFight/*.mp4`` and ``videos.txt``, which maps each clip to the source video
it was cut from; the source videos are the groups (a clip no source lists is its own group). The
videos stay outside the repository. The benchmark writes ``WORK/manifest.csv`` from FOLDER
(path,label,group) and ``WORK/params.yaml`` (the repository's ``params.yaml`` with: 160×160
frames, 16 frames at 8 fps = the clips' 2 s, one clip per video, ``model.backbone: file`` with
the shared ImageNet MobileNetV2, frozen, seeing the frame differences (``temporal_input:
difference``: 15 per clip, as images), ``head: temporal_stats`` with mean, standard deviation and
mean change of each feature, ``dropout: 0``, the feature cache in WORK), then runs
``python -m training.crossval`` and prints per fold and mean: test video accuracy, majority
baseline, balanced accuracy, and seconds of

* decoding: the ``python -m pipeline`` subprocess's wall time (fold 1 decodes every video; later
  folds reuse its clips from the reuse cache, so they cost listing, hashing and writing records);
* feature extraction: what ``training.train`` and ``training.evaluate`` log for the frozen-feature
  path. The feature cache is keyed clip by clip, so each clip's features are computed once in
  the whole run: fold 1's training computes its train and val clips, its evaluation the test
  clips, and later folds find every clip cached. Evaluation also runs the backbone on each test
  clip's frames shuffled and reversed in time (the temporal-order checks of ``metrics.json``:
  frame differences of a shuffled clip are other images), in every fold;
* training: the ``training.train`` subprocess's wall time less its feature extraction (start-up,
  reading the cache, model building, fitting the head, saving);
* evaluation: the ``training.evaluate`` subprocess's wall time less its feature extraction.

Then, on fold 1's test records, in this process: the frozen-feature path's extraction
(``training.features.compute_features``: records decoded by tf.data while the backbone runs)
against the same backbone's ``predict_on_batch`` on the same frames already held in memory,
both timed twice, the faster kept; the ratio is the issue's target (>= 0.8).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_BACKBONE = str(REPO.parent / "shared" / "backbones" / "mobilenet_v2_imagenet.keras")
CLASSES = ("fight", "noFight")


def source_groups(videos_txt: str) -> dict[str, str]:
    """``{clip name: group}`` from the dataset's ``videos.txt``: a URL line opens a source video
    (``src001``, ...) whose ``fiNNN:``/``nofiNNN:`` lines follow; a ``nofiA - nofiB : name`` line
    names a range of clips from one named source."""
    groups: dict[str, str] = {}
    group, sources = None, 0
    with open(videos_txt, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            if line.startswith("http"):
                sources += 1
                group = f"src{sources:03d}"
                continue
            span = re.match(r"^nofi(\d+)\s*-\s*nofi(\d+)\s*:\s*(\w+)", line)
            if span:
                for i in range(int(span.group(1)), int(span.group(2)) + 1):
                    groups.setdefault(f"nofi{i:03d}", span.group(3).lower())
                continue
            clip = re.match(r"^(n?o?fi\d+)\s*:", line)
            if clip and group:
                groups.setdefault(clip.group(1), group)
    return groups


def write_manifest(folder: str, path: str) -> tuple[int, int]:
    """The manifest (absolute paths, label, group) of FOLDER; returns (videos, groups)."""
    groups = source_groups(os.path.join(folder, "videos.txt"))
    rows = []
    for label in CLASSES:
        for name in sorted(os.listdir(os.path.join(folder, label))):
            if name.lower().endswith(".mp4"):
                stem = os.path.splitext(name)[0]
                rows.append((os.path.abspath(os.path.join(folder, label, name)), label, groups.get(stem, "solo-" + stem)))
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return len(rows), len({r[2] for r in rows})


def write_params(path: str, backbone: str, work: str) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["preprocess"].update({"height": 160, "width": 160, "sequence_length": 16, "fps": 8.0, "clips_per_video": 1})
    params["model"].update({"backbone": "file", "backbone_file": backbone, "freeze_backbone": True,
                            "temporal_input": "difference", "with_frames": False, "head": "temporal_stats",
                            "statistics": ["mean", "std", "change"], "dropout": 0.0})  # fmt: skip
    params["train"]["feature_cache"] = os.path.join(work, "features")
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(params, handle, sort_keys=False)


def extraction_vs_memory(records_dir: str, model_path: str, repeats: int = 2) -> dict[str, float]:
    """Frames/s of the frozen-feature path on a split against the backbone on the same frames in memory.

    Both run the model's per-frame part through the same traced function
    (:func:`training.model.traced_call`, traced before either is timed), on batches of
    ``CLIPS_PER_BATCH`` clips: in memory, on float32 clips decoded beforehand; on the path, from
    the shards (tf.data reading, decoding and converting on the same cores while the backbone runs).
    """
    import numpy as np

    from pipeline import records
    from training.data import make_dataset
    from training.features import CLIPS_PER_BATCH, compute_features
    from training.model import load_keras_model, split_model, traced_call

    spec = records.read_spec(records_dir)
    features, _ = split_model(load_keras_model(model_path))
    batches = [clips for clips, _ in make_dataset(records_dir, "test", spec, CLIPS_PER_BATCH).as_numpy_iterator()]
    frames = sum(len(b) for b in batches) * spec.sequence_length
    run = traced_call(features)
    run(batches[0])  # tracing, once for every batch size
    memory, path = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        for clips in batches:
            np.asarray(run(clips))
        memory.append(time.perf_counter() - start)
        start = time.perf_counter()
        compute_features(records_dir, "test", spec, features)
        path.append(time.perf_counter() - start)
    in_memory, extraction = frames / min(memory), frames / min(path)
    return {"frames": frames, "in_memory_fps": in_memory, "extraction_fps": extraction, "ratio": extraction / in_memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the fight dataset's folder (fight/, noFight/, videos.txt)")
    parser.add_argument("--folds", type=int, default=5, choices=(3, 5))
    parser.add_argument("--seed", type=int, default=0, help="the fold assignment's seed")
    parser.add_argument("--work", help="working folder (default: a temporary one, kept)")
    parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help="the .keras image model (default: %(default)s)")
    args = parser.parse_args(argv)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="vidseq-real-"))
    os.makedirs(work, exist_ok=True)
    manifest, params = os.path.join(work, "manifest.csv"), os.path.join(work, "params.yaml")
    videos, groups = write_manifest(args.folder, manifest)
    write_params(params, os.path.abspath(args.backbone), work)
    print(f"{videos} videos, {groups} groups, {args.folds} folds; working in {work}", flush=True)
    start = time.perf_counter()
    out = os.path.join(work, "cv")
    done = subprocess.run([sys.executable, "-m", "training.crossval", "--input", manifest, "--output", out,
                           "--folds", str(args.folds), "--params", params, "--seed", str(args.seed)], cwd=REPO)  # fmt: skip
    total = time.perf_counter() - start
    if done.returncode != 0:
        print(f"cross-validation failed (exit {done.returncode})", file=sys.stderr)
        return 1
    report = json.loads(Path(out, "crossval.json").read_text())
    print(f"\n{'fold':>5} {'accuracy':>9} {'majority':>9} {'balanced':>9} {'decode s':>9} {'features s':>11} "
          f"{'train s':>8} {'evaluate s':>11}")  # fmt: skip
    for k, fold in enumerate(report["per_fold"], start=1):
        trained, evaluated = fold["feature_seconds"] or 0.0, fold["evaluate_feature_seconds"] or 0.0
        print(f"{k:>5} {fold['video_accuracy']:>9.3f} {fold['majority_baseline']:>9.3f} {fold['video_balanced_accuracy']:>9.3f} "
              f"{fold['seconds']['preprocess']:>9.1f} {trained + evaluated:>11.1f} {fold['seconds']['train'] - trained:>8.1f} "
              f"{fold['seconds']['evaluate'] - evaluated:>11.1f}")  # fmt: skip
    s = report["summary"]
    print(f"{'mean':>5} {s['video_accuracy']['mean']:>9.3f} {s['majority_baseline']['mean']:>9.3f} "
          f"{s['video_balanced_accuracy']['mean']:>9.3f}   (± {s['video_accuracy']['std']:.3f} "
          f"/ {s['majority_baseline']['std']:.3f} / {s['video_balanced_accuracy']['std']:.3f} sample std)")  # fmt: skip
    print(f"cross-validation: {total:.0f} s in all (target <= 1200 s); mean accuracy target >= 0.80")
    speed = extraction_vs_memory(os.path.join(out, "fold-1", "records"), os.path.join(out, "fold-1", "model", "model.keras"))
    print(f"feature extraction {speed['extraction_fps']:.1f} frames/s vs the backbone on the same {speed['frames']} frames "
          f"in memory {speed['in_memory_fps']:.1f} frames/s: ratio {speed['ratio']:.2f} (target >= 0.8)")  # fmt: skip
    Path(work, "benchmark.json").write_text(json.dumps({"crossval": report, "total_s": total, "speed": speed}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
