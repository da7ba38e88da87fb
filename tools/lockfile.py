"""The locked dependency set (requirements.lock): read it, compare an environment with it, make one equal.

``requirements.lock`` is uv's ``pip compile`` output for vidseq with its ``team`` and ``dev`` extras:
every package, transitive ones included, at one version with the hashes of its files. ``make install``
installs it with plain pip (``pip install --require-hashes --no-deps -r requirements.lock``), which
adds and re-versions but never removes; :func:`sync` then uninstalls what the lock does not hold, so
``pip list`` is the lock plus vidseq itself. ``make check-latest`` uses :func:`differences` to list
which releases the newest resolution would change.

Only the standard library is used: this runs before (and outside) the locked environment.

Usage::

    python -m tools.lockfile check requirements.lock   # exit 1 and a list when the env differs
    python -m tools.lockfile sync requirements.lock    # uninstall packages the lock does not hold
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence

PROJECT = "vidseq"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (``Google_CRC32C`` -> ``google-crc32c``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line of a requirements lock.

    Raises:
        ValueError: a requirement line that is not an exact pin (the lock must pin everything).
    """
    pins: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "--hash", "-")):
            continue
        match = _PIN.match(stripped)
        if not match:
            raise ValueError(f"line {number} of the lock is not an exact pin (name==version): {stripped!r}")
        pins[normalize(match.group(1))] = match.group(2)
    return pins


def installed(distributions: Iterable[importlib.metadata.Distribution] | None = None) -> dict[str, str]:
    """``{normalized name: version}`` of the distributions the running Python sees."""
    dists = importlib.metadata.distributions() if distributions is None else distributions
    found: dict[str, str] = {}
    for dist in dists:
        name = dist.metadata["Name"]
        if name:
            found.setdefault(normalize(name), dist.version)
    return found


@dataclasses.dataclass(frozen=True)
class Differences:
    """How an environment differs from a lock (vidseq itself is never counted).

    Attributes:
        missing: locked names that are not installed.
        extra: installed names the lock does not hold.
        changed: ``{name: (locked, installed)}`` where both have it at different versions.
    """

    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.changed)

    def lines(self, locked: Mapping[str, str], found: Mapping[str, str], what: str = "installed") -> list[str]:
        """One line per difference, sorted by name: ``name: locked 1.0, installed 1.1``."""
        out = [f"{name}: locked {locked[name]}, {what} {found[name]}" for name in sorted(self.changed)]
        out += [f"{name}: locked {locked[name]}, not {what}" for name in self.missing]
        out += [f"{name}: not locked, {what} {found[name]}" for name in self.extra]
        return sorted(out)


def differences(locked: Mapping[str, str], found: Mapping[str, str]) -> Differences:
    """What differs between a lock and an environment (or another resolution)."""
    locked = {n: v for n, v in locked.items() if n != PROJECT}
    found = {n: v for n, v in found.items() if n != PROJECT}
    return Differences(
        missing=tuple(sorted(set(locked) - set(found))),
        extra=tuple(sorted(set(found) - set(locked))),
        changed={n: (locked[n], found[n]) for n in sorted(set(locked) & set(found)) if locked[n] != found[n]},
    )


def sync(lock_path: str, python: str = sys.executable) -> Differences:
    """Uninstalls (with pip) what the lock does not hold; returns what still differs afterwards."""
    with open(lock_path, encoding="utf-8") as handle:
        locked = read_lock(handle.read())
    extra = differences(locked, installed()).extra
    if extra:
        print(f"removing {len(extra)} package(s) that {lock_path} does not hold: {' '.join(extra)}")
        subprocess.run([python, "-m", "pip", "uninstall", "--yes", "--quiet", *extra], check=True)
        importlib.invalidate_caches()
    return differences(locked, installed())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lockfile", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("check", "sync"))
    parser.add_argument("lock", nargs="?", default="requirements.lock")
    args = parser.parse_args(argv)
    try:
        with open(args.lock, encoding="utf-8") as handle:
            locked = read_lock(handle.read())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the lock {args.lock}: {exc}", file=sys.stderr)
        return 2
    left = sync(args.lock) if args.command == "sync" else differences(locked, installed())
    if left:
        lines = left.lines(locked, installed())
        for line in lines:
            print(f"  {line}", file=sys.stderr)
        print(f"error: this environment ({sys.prefix}) differs from {args.lock} in {len(lines)} package(s): "
              "run `make install`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
