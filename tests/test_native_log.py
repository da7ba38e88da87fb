"""Tests of vidseq.native_log: TensorFlow's Abseil start-up lines held to TF_CPP_MIN_LOG_LEVEL, everything else kept."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vidseq import native_log

REPO = Path(__file__).resolve().parents[1]
INFO = "I0000 00:00:1796114732.066300    9861 port.cc:153] oneDNN custom operations are on. You may see ...\n"
CUDA = "I0000 00:00:1796114732.066611    9861 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n"
WARN = "W1201 08:41:02.123456  123 some_file.cc:7] a warning\n"
ERROR = "E0000 00:00:1796114733.1 77 cuda_executor.cc:1228] failed call to cuInit: UNKNOWN ERROR (303)\n"
FATAL = "F0000 00:00:1796114733.1 77 port.cc:9] Check failed: it is broken\n"


@pytest.mark.parametrize(
    "level, hidden",
    [(0, set()), (1, {"preamble", "info"}), (2, {"preamble", "info", "warn"}), (3, {"preamble", "info", "warn", "error"})],
)
def test_abseil_lines_are_dropped_below_the_level_and_nothing_else(level, hidden):
    lines = {"preamble": native_log.PREAMBLE + "\n", "info": INFO, "warn": WARN, "error": ERROR, "fatal": FATAL,
             "python": "UserWarning: I0000 is not at the start\n", "plain": "I0000 a line without Abseil's prefix\n"}  # fmt: skip
    assert {name for name, line in lines.items() if native_log.dropped(line, level)} == hidden


def test_held_lines_come_back_in_order_without_the_dropped_ones(capfd):
    print("before", file=sys.stderr)
    with native_log.filtered_stderr(lambda line: native_log.dropped(line, 3)):
        os.write(2, (native_log.PREAMBLE + "\n" + INFO).encode())
        print("python says", file=sys.stderr)
        os.write(2, (CUDA + "a library's own line\n" + FATAL).encode())
    print("after", file=sys.stderr)
    assert capfd.readouterr().err == "before\npython says\na library's own line\n" + FATAL + "after\n"


def test_the_descriptor_is_restored_when_the_import_fails(capfd):
    with pytest.raises(ImportError), native_log.filtered_stderr(lambda line: False):
        os.write(2, b"said while failing\n")
        raise ImportError("broken")
    os.write(2, b"later\n")
    assert capfd.readouterr().err == "said while failing\nlater\n"


def tensorflow_start(env_level: str | None) -> subprocess.CompletedProcess:
    code = ("import sys; from vidseq import cli; cli.quiet_libraries(); print('before', file=sys.stderr); "
            "import tensorflow as tf; tf.constant(1); print('after', file=sys.stderr)")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = str(REPO)
    if env_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = env_level
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def test_a_tensorflow_start_prints_none_of_its_start_up_lines_and_the_user_setting_wins():
    default = tensorflow_start(None if not os.path.exists("/proc/driver/nvidia/version") else "3")
    assert default.stderr.splitlines() == ["before", "after"]
    loud = tensorflow_start("0")  # the user asks for everything: TensorFlow's lines are all there
    info = re.search(r"^I\d{4} .*\.cc:\d+\] ", loud.stderr, re.M)  # oneDNN's port.cc (TF 2.20), cuInit's (2.21), ...
    assert native_log.PREAMBLE in loud.stderr and info, loud.stderr
    assert loud.stderr.index("before") < info.start() < loud.stderr.index("after")


def test_the_hook_is_gone_after_the_import_and_not_installed_once_tensorflow_is_loaded():
    code = ("import sys; from vidseq import native_log; assert native_log.install(); "
            "import tensorflow; assert not any(isinstance(f, native_log._Hook) for f in sys.meta_path); "
            "assert not native_log.install(); print('ok')")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
