"""The job's default parallelism: one worker process per usable core, decoder threads that fill, never oversubscribe.

With no runner flags, ``python -m pipeline`` runs Beam's DirectRunner in multi-processing
mode with one worker per core this process may use: the smallest of ``os.cpu_count()``, the
CPU affinity mask (``taskset``, ``docker --cpuset-cpus``) and the cgroup CPU quota (``docker
--cpus``, Kubernetes limits), rounded up. ``--direct_running_mode`` and
``--direct_num_workers`` override the mode and the count; any ``--runner`` leaves everything
to that runner. Each worker decodes with ``cores // workers`` FFmpeg threads (at least one),
unless ``preprocess.decode_threads`` sets a count.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Sequence

CGROUP_V2_CPU_MAX = "/sys/fs/cgroup/cpu.max"
CGROUP_V1_QUOTA = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"
CGROUP_V1_PERIOD = "/sys/fs/cgroup/cpu/cpu.cfs_period_us"


def cgroup_quota(read: Callable[[str], str | None]) -> float | None:
    """CPUs allowed by the cgroup's quota (``quota / period``), or None without a quota.

    Args:
        read: returns a file's text, or None when it does not exist.
    """
    text = read(CGROUP_V2_CPU_MAX)
    if text is not None:  # "max 100000" or "150000 100000"
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            return int(parts[0]) / int(parts[1])
        return None
    quota, period = read(CGROUP_V1_QUOTA), read(CGROUP_V1_PERIOD)
    if quota is not None and period is not None and int(quota) > 0:
        return int(quota) / int(period)
    return None


def usable_cpus(cpu_count: int | None, affinity: int | None, quota: float | None) -> int:
    """The cores this process may really use: the smallest limit, at least 1."""
    limits = [n for n in (cpu_count, affinity) if n]
    if quota:
        limits.append(math.ceil(quota))
    return max(1, min(limits)) if limits else 1


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except OSError:
        return None


def this_machine() -> int:
    """:func:`usable_cpus` for this process."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return usable_cpus(os.cpu_count(), affinity, cgroup_quota(_read))


@dataclasses.dataclass(frozen=True)
class Parallelism:
    """How the job runs.

    Attributes:
        beam_args: the Beam flags to run with (the user's, plus the defaults they left out).
        workers: DirectRunner workers, or None when another runner decides.
        mode: the DirectRunner's running mode, or the runner's name.
        decoder_threads: FFmpeg threads per video (0: FFmpeg's own choice).
    """

    beam_args: tuple[str, ...]
    workers: int | None
    mode: str
    decoder_threads: int

    def describe(self) -> str:
        """E.g. ``2 worker processes``, ``1 process`` or ``DataflowRunner``."""
        if self.workers is None:
            return self.mode
        if self.mode == "multi_processing":
            return f"{self.workers} worker process{'es' if self.workers != 1 else ''}"
        if self.mode == "multi_threading":
            return f"{self.workers} worker thread{'s' if self.workers != 1 else ''}"
        return "1 process"


def plan(beam_args: Sequence[str], cpus: int, decode_threads: int = 0) -> Parallelism:
    """Adds the default parallelism to the user's Beam flags.

    Args:
        beam_args: the flags the job passes to ``PipelineOptions``.
        cpus: usable cores (:func:`this_machine`).
        decode_threads: ``preprocess.decode_threads`` (0: choose).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runner")
    parser.add_argument("--direct_running_mode")
    parser.add_argument("--direct_num_workers", type=int)
    given, _ = parser.parse_known_args(list(beam_args))
    args = list(beam_args)
    if given.runner is not None:
        return Parallelism(tuple(args), None, given.runner, decode_threads)
    mode = given.direct_running_mode or ("multi_processing" if cpus > 1 else "in_memory")
    if given.direct_running_mode is None:
        args.append(f"--direct_running_mode={mode}")
    workers = given.direct_num_workers or (cpus if mode != "in_memory" else 1)
    if mode != "in_memory" and given.direct_num_workers is None:
        args.append(f"--direct_num_workers={workers}")
    if mode == "in_memory":
        workers = 1
    threads = decode_threads or max(1, cpus // max(1, workers))
    return Parallelism(tuple(args), workers, mode, threads)
