"""Split coverage: which classes each split holds, and what to warn about; never a refusal.

Pure (no Beam): the preprocessing job calls :func:`check` on the listing before any decoding
and :func:`clip_warnings` on the clip counts after it. Any listing preprocesses: one video,
a test set alone (``preprocess.splits: {test: 1.0}``), a shard of a larger listing. A split
that is empty or lacks a class makes its metrics mean less, so it is a warning (printed,
counted in the summary line and stored in ``dataset.json`` ``warnings``). Whether the records
hold what a stage needs (train and val clips for training, the evaluated split for
evaluation) is checked by that stage (:func:`pipeline.records.require_splits`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from pipeline.records import SPLITS


class _Item(Protocol):
    label: str
    group: str
    split: str


def video_counts(items: Iterable[_Item]) -> dict[str, dict[str, int]]:
    """``{split: {class: videos}}`` of a listing."""
    counts: dict[str, dict[str, int]] = {}
    for item in items:
        per_class = counts.setdefault(item.split, {})
        per_class[item.label] = per_class.get(item.label, 0) + 1
    return counts


def check(items: Sequence[_Item], classes: Sequence[str], fractions: Mapping[str, float]) -> list[str]:
    """The warnings about the listing's splits.

    A split counts when ``preprocess.splits`` gives it a fraction or a manifest's ``split``
    column puts a video into it; each such split that is empty or lacks a class gets a warning.

    Args:
        items: the listed videos (``label``, ``group``, ``split``).
        classes: every class of the dataset.
        fractions: ``preprocess.splits``.

    Returns:
        One sentence per split that is empty or lacks a class, in train, val, test order.
    """
    counts = video_counts(items)
    groups = len({(item.label, item.group) for item in items})
    warnings = []
    for split in SPLITS:
        if fractions.get(split, 0.0) <= 0 and split not in counts:
            continue
        present = counts.get(split, {})
        if not present:
            warnings.append(
                f"split {split!r} is empty ({len(items)} videos in {groups} groups drew no {split} video "
                f"for preprocess.splits {_fractions(fractions)}): its metrics cannot be computed; "
                "add videos (or groups), or change preprocess.splits or preprocess.split_salt"
            )
            continue
        missing = [name for name in classes if name not in present]
        if missing:
            warnings.append(
                f"split {split!r} has no video of class {', '.join(missing)} ({len(missing)} of {len(classes)} "
                "classes): add videos of those classes or change preprocess.split_salt"
            )
    return warnings


def clip_warnings(splits: Mapping[str, Mapping[str, int]], listed: Mapping[str, int]) -> list[str]:
    """After decoding: a warning for each split whose listed videos all failed.

    Args:
        splits: the decoded ``{split: {clips, videos}}``.
        listed: videos listed per split (before decoding).
    """
    return [
        f"split {split!r} has no clips: every one of its {listed[split]} video(s) failed (see errors.jsonl): "
        "fix or replace those videos"
        for split in SPLITS
        if listed.get(split) and not splits.get(split, {}).get("clips")
    ]


def _fractions(fractions: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {value:g}" for name, value in fractions.items()) + "}"
