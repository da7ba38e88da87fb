"""Split coverage: which classes each split holds, what to warn about, and when training cannot work.

Pure (no Beam): the preprocessing job calls :func:`check` on the listing before any decoding,
so a dataset too small for its splits fails in seconds with one line saying what to change,
and :func:`clip_warnings` on the clip counts after decoding. The minimum: training needs at
least one video in ``train`` and one in ``val`` (early stopping and the kept weights are
chosen on ``val``); every class in every split with a non-zero fraction is what makes the
metrics mean something, so a split without a class, or an empty ``test`` split, is a warning
(printed and stored in ``dataset.json`` ``warnings``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from vidseq.errors import VidseqError

REQUIRED = ("train", "val")  # training cannot run without clips in these


class CoverageError(VidseqError):
    """A split that training needs (``train``, ``val``) gets no video or no clip."""


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
    """Checks that the listing's splits can train a model; returns the warnings.

    Args:
        items: the listed videos (``label``, ``group``, ``split``).
        classes: every class of the dataset.
        fractions: ``preprocess.splits``.

    Returns:
        One sentence per split (with a non-zero fraction) that is empty or lacks a class.

    Raises:
        CoverageError: if ``train`` or ``val`` gets no video.
    """
    counts = video_counts(items)
    groups = len({(item.label, item.group) for item in items})
    for split in REQUIRED:
        if not counts.get(split):
            raise CoverageError(
                f"split {split!r} gets no video: {len(items)} videos in {groups} groups are too few for "
                f"preprocess.splits {_fractions(fractions)}; training needs at least one video in train and "
                "one in val: add videos (or groups), or change preprocess.splits or preprocess.split_salt"
            )
    warnings = []
    for split, fraction in fractions.items():
        if fraction <= 0:
            continue
        present = counts.get(split, {})
        if not present:
            warnings.append(f"split {split!r} is empty: its metrics cannot be computed; add videos (or groups)")
            continue
        missing = [name for name in classes if name not in present]
        if missing:
            warnings.append(
                f"split {split!r} has no video of class {', '.join(missing)} ({len(missing)} of {len(classes)} "
                "classes): add videos of those classes or change preprocess.split_salt"
            )
    return warnings


def clip_warnings(splits: Mapping[str, Mapping[str, int]]) -> list[str]:
    """After decoding: a warning for ``train`` or ``val`` without clips (all its videos failed).

    Not an error: the job's output is still right (``errors.jsonl`` says why each failed), but
    training on it stops at once, so the user hears it now.
    """
    return [
        f"split {split!r} has no clips: every one of its videos failed (see errors.jsonl); training needs clips "
        "in train and val: fix or replace those videos"
        for split in REQUIRED
        if not splits.get(split, {}).get("clips")
    ]


def _fractions(fractions: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {value:g}" for name, value in fractions.items()) + "}"
