"""``python -m pipeline.manifest``: a manifest CSV (path,label,group,split) from UCF101's or HMDB51's published split lists.

Usage::

    python -m pipeline.manifest ucf101 --videos UCF-101 --lists ucfTrainTestlist --fold 1 --output ucf101-1.csv
    python -m pipeline.manifest hmdb51 --videos hmdb51 --lists testTrainMulti_7030_splits --fold 1 --output hmdb51-1.csv
    python -m pipeline --input ucf101-1.csv --output data/records

The published lists name a train and a test set per fold; neither has a validation set, so
``--val-fraction`` of each class's train groups (whole groups, chosen by a stable hash of
``--salt``: the same on every run) becomes ``val``. The job keeps the ``split`` column as
written (:mod:`pipeline.sources`), so results compare with published ones on that fold.

* **UCF101** (``ucfTrainTestlist``): ``classInd.txt`` (``1 ApplyEyeMakeup``), ``trainlistNN.txt``
  (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``) and ``testlistNN.txt`` (the same without the
  label), paths relative to the folder of class folders. The group is the ``gNN`` part: the
  clips of one group come from one long video.
* **HMDB51** (``testTrainMulti_7030_splits``): ``<action>_test_splitN.txt`` per action, lines
  ``<video>.avi <0|1|2>``: 1 train, 2 test, 0 unused (left out). Videos lie in
  ``<action>/<video>.avi``. The group is the source film, the name's part before
  ``_<action>_`` (its clips share actors and scenes).

Paths in the manifest are relative to its folder when both are on a local disk, else full
paths. Pure parsing functions, a thin :func:`main`.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import logging
import os
import posixpath
import re
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.sources import InputError, group_of
from vidseq import cli

logger = logging.getLogger(__name__)

FORMATS = ("ucf101", "hmdb51")
_HMDB_LIST = re.compile(r"^(?P<action>.+)_test_split(?P<fold>\d+)\.txt$")
_HMDB_SPLITS = {"1": "train", "2": "test"}  # 0: not used in this fold


@dataclasses.dataclass(frozen=True)
class Row:
    """One manifest row; ``path`` is relative to the folder of class folders."""

    path: str
    label: str
    group: str
    split: str


# --------------------------------------------------------------------------- UCF101


def ucf101_rows(class_ind: str, train_list: str, test_list: str, source: str = "ucfTrainTestlist") -> list[Row]:
    """The rows of one UCF101 fold.

    Args:
        class_ind: text of ``classInd.txt``.
        train_list: text of ``trainlistNN.txt``.
        test_list: text of ``testlistNN.txt``.
        source: the lists' folder, for messages.

    Raises:
        InputError: a line that does not parse, or a train label that disagrees with the folder.
    """
    classes = {}
    for number, line in _lines(class_ind):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise InputError(f"{source}/classInd.txt line {number}: expected '<index> <class>', got {line!r}")
        classes[int(fields[0])] = fields[1]
    rows = []
    for split, text, name in (("train", train_list, "trainlist"), ("test", test_list, "testlist")):
        for number, line in _lines(text):
            fields = line.split()
            path = fields[0].replace("\\", "/")
            label = path.split("/", 1)[0] if "/" in path else ""
            if not label or len(fields) > 2:
                raise InputError(f"{source}/{name} line {number}: expected '<class>/<video> [index]', got {line!r}")
            if len(fields) == 2 and classes and classes.get(int(fields[1])) != label:
                raise InputError(
                    f"{source}/{name} line {number}: class index {fields[1]} is {classes.get(int(fields[1]))!r} in "
                    f"classInd.txt but the video lies in {label!r}: use the lists that came with these videos"
                )
            if classes and label not in classes.values():
                raise InputError(f"{source}/{name} line {number}: class {label!r} is not in classInd.txt")
            rows.append(Row(path=path, label=label, group=group_of(path, label), split=split))
    return rows


# --------------------------------------------------------------------------- HMDB51


def hmdb51_rows(lists: Mapping[str, str], fold: int, source: str = "testTrainMulti_7030_splits") -> list[Row]:
    """The rows of one HMDB51 fold.

    Args:
        lists: ``{file name: text}`` of the split files (other folds' files are ignored).
        fold: 1, 2 or 3.
        source: the lists' folder, for messages.

    Raises:
        InputError: no list of that fold, or a line that does not parse.
    """
    rows = []
    for name in sorted(lists):
        match = _HMDB_LIST.match(name)
        if not match or int(match["fold"]) != fold:
            continue
        action = match["action"]
        for number, line in _lines(lists[name]):
            fields = line.split()
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise InputError(f"{source}/{name} line {number}: expected '<video>.avi <0|1|2>', got {line!r}")
            if fields[1] == "0":
                continue
            video = fields[0]
            rows.append(Row(path=f"{action}/{video}", label=action, group=hmdb51_group(video, action),
                            split=_HMDB_SPLITS[fields[1]]))  # fmt: skip
    if not rows:
        raise InputError(
            f"no HMDB51 list of fold {fold} in {source}: expected files <action>_test_split{fold}.txt "
            "with lines '<video>.avi <0|1|2>'"
        )
    return rows


def hmdb51_group(video: str, action: str) -> str:
    """The source film of an HMDB51 clip: the name's part before ``_<action>_``, else the name without its clip number."""
    stem = video.rsplit(".", 1)[0]
    cut = stem.find(f"_{action}_")
    film = stem[:cut] if cut > 0 else re.sub(r"_\d+$", "", stem)
    return f"{action}/{film}"


# --------------------------------------------------------------------------- validation carved from train


def carve_val(rows: Sequence[Row], fraction: float, salt: str = "vidseq-val") -> list[Row]:
    """Moves ``fraction`` of each class's train groups (at least one where a class has two) into ``val``.

    The groups are ranked by a stable hash of ``salt`` and the group, so the choice is the same
    on every run and machine, and a group never straddles train and val.
    """
    if fraction <= 0:
        return list(rows)
    groups: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.split == "train":
            groups[row.label].add(row.group)
    chosen = set()
    for label, names in groups.items():
        count = min(len(names) - 1, max(1, round(fraction * len(names)))) if len(names) > 1 else 0
        ranked = sorted(names, key=lambda g: hashlib.sha256(f"{salt}\x00{g}".encode()).hexdigest())
        chosen.update((label, g) for g in ranked[:count])
    return [dataclasses.replace(r, split="val") if r.split == "train" and (r.label, r.group) in chosen else r
            for r in rows]  # fmt: skip


# --------------------------------------------------------------------------- writing


def manifest_text(rows: Iterable[Row], videos: str, manifest: str) -> str:
    """The CSV: paths relative to the manifest's folder when both are local, else full paths."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "label", "group", "split"])
    local = "://" not in videos and "://" not in manifest
    base = os.path.dirname(os.path.abspath(manifest)) if local else ""
    for row in sorted(rows, key=lambda r: r.path):
        if local:
            path = os.path.relpath(os.path.join(os.path.abspath(videos), row.path), base).replace(os.sep, "/")
        else:
            path = posixpath.join(videos.rstrip("/"), row.path) if "://" in videos else os.path.join(os.path.abspath(videos), row.path)
        writer.writerow([path, row.label, row.group, row.split])
    return out.getvalue()


def missing_videos(rows: Sequence[Row], videos: str) -> list[str]:
    """Listed videos not under ``videos`` (one listing of the folder, not one request per video)."""
    root = videos.rstrip("/")
    try:
        found = {m.path[len(root):].lstrip("/").replace(os.sep, "/")
                 for m in FileSystems.match([FileSystems.join(root, "**")])[0].metadata_list}  # fmt: skip
    except Exception:  # noqa: BLE001 - Beam raises BeamIOError for a prefix without objects
        found = set()
    return [row.path for row in rows if row.path not in found]


def _lines(text: str) -> Iterable[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield number, line.strip()


def _read(path: str) -> str:
    if not FileSystems.exists(path):
        raise InputError(f"{path} does not exist: pass --lists, the folder of the published split files")
    with FileSystems.open(path) as handle:
        return handle.read().decode("utf-8-sig")


def _read_lists(kind: str, lists: str, fold: int) -> list[Row]:
    if kind == "ucf101":
        return ucf101_rows(
            _read(FileSystems.join(lists, "classInd.txt")),
            _read(FileSystems.join(lists, f"trainlist{fold:02d}.txt")),
            _read(FileSystems.join(lists, f"testlist{fold:02d}.txt")),
            source=lists,
        )
    try:
        names = [m.path for m in FileSystems.match([FileSystems.join(lists.rstrip("/"), f"*_test_split{fold}.txt")])[0].metadata_list]
    except Exception:  # noqa: BLE001 - no match
        names = []
    return hmdb51_rows({posixpath.basename(n.replace(os.sep, "/")): _read(n) for n in names}, fold, source=lists)


def _run(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.manifest", description=__doc__.splitlines()[0])
    parser.add_argument("format", choices=FORMATS, help="whose split lists")
    parser.add_argument("--videos", required=True, help="the folder of class folders (<class>/<video>.avi)")
    parser.add_argument("--lists", required=True, help="the folder of the published split files")
    parser.add_argument("--fold", type=int, default=1, choices=(1, 2, 3), help="which published split (default: 1)")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="of each class's train groups, moved to val (default: %(default)s; 0: no val)")
    parser.add_argument("--salt", default="vidseq-val", help="changes which groups go to val, deterministically")
    parser.add_argument("--output", required=True, help="the manifest CSV to write")
    args = parser.parse_args(argv)
    if not 0.0 <= args.val_fraction < 1.0:
        raise InputError(f"--val-fraction must be in [0, 1), got {args.val_fraction}")
    rows = carve_val(_read_lists(args.format, args.lists, args.fold), args.val_fraction, args.salt)
    missing = missing_videos(rows, args.videos)
    if missing:
        print(f"warning: {len(missing)} listed video(s) are not under {args.videos} (first: {missing[0]}); "
              "the job will record each in errors.jsonl", file=sys.stderr)  # fmt: skip
    with FileSystems.create(args.output, mime_type="text/csv") as handle:
        handle.write(manifest_text(rows, args.videos, args.output).encode("utf-8"))
    counts = {s: sum(r.split == s for r in rows) for s in ("train", "val", "test")}
    print(f"{len(rows)} videos in {len({r.label for r in rows})} classes ({', '.join(f'{s} {n}' for s, n in counts.items())}) "
          f"-> {args.output}; python -m pipeline --input {args.output} --output RECORDS")  # fmt: skip


main = cli.harness(_run)

if __name__ == "__main__":
    sys.exit(main())
