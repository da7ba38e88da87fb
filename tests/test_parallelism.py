"""Tests of pipeline.parallelism: the default worker count and decoder threads (pure)."""

from __future__ import annotations

import pytest

from pipeline import parallelism


@pytest.mark.parametrize(
    "files, quota",
    [
        ({parallelism.CGROUP_V2_CPU_MAX: "max 100000\n"}, None),
        ({parallelism.CGROUP_V2_CPU_MAX: "150000 100000\n"}, 1.5),
        ({parallelism.CGROUP_V1_QUOTA: "-1\n", parallelism.CGROUP_V1_PERIOD: "100000\n"}, None),
        ({parallelism.CGROUP_V1_QUOTA: "400000\n", parallelism.CGROUP_V1_PERIOD: "100000\n"}, 4.0),
        ({}, None),
    ],
)
def test_cgroup_quota(files, quota):
    assert parallelism.cgroup_quota(files.get) == quota


@pytest.mark.parametrize(
    "cpu_count, affinity, quota, usable",
    [
        (16, 16, None, 16),
        (16, 4, None, 4),  # taskset / cpuset
        (16, 16, 2.5, 3),  # docker --cpus=2.5: rounded up
        (16, 8, 12.0, 8),
        (None, None, None, 1),
    ],
)
def test_usable_cpus(cpu_count, affinity, quota, usable):
    assert parallelism.usable_cpus(cpu_count, affinity, quota) == usable


@pytest.mark.parametrize(
    "args, cpus, threads, added, workers, decoder_threads, described",
    [
        ([], 8, 0, ["--direct_running_mode=multi_processing", "--direct_num_workers=8"], 8, 1, "8 worker processes"),
        ([], 1, 0, ["--direct_running_mode=in_memory"], 1, 1, "1 process"),
        (["--direct_num_workers=2"], 8, 0, ["--direct_running_mode=multi_processing"], 2, 4, "2 worker processes"),
        (["--direct_running_mode=in_memory"], 8, 0, [], 1, 8, "1 process"),
        (["--direct_running_mode", "multi_threading"], 4, 0, ["--direct_num_workers=4"], 4, 1, "4 worker threads"),
        ([], 8, 3, ["--direct_running_mode=multi_processing", "--direct_num_workers=8"], 8, 3, "8 worker processes"),
        (["--runner", "DataflowRunner", "--project=p"], 8, 0, [], None, 0, "DataflowRunner"),
        (["--runner=DirectRunner"], 8, 0, [], None, 0, "DirectRunner"),
    ],
)
def test_plan(args, cpus, threads, added, workers, decoder_threads, described):
    result = parallelism.plan(args, cpus, threads)
    assert list(result.beam_args) == args + added
    assert (result.workers, result.decoder_threads, result.describe()) == (workers, decoder_threads, described)


def test_this_machine_is_within_the_os_limits():
    import os

    assert 1 <= parallelism.this_machine() <= (os.cpu_count() or 1)
