"""Tests of training.limits: limits from defaults, model config and environment; request checks; the decode gate."""

from __future__ import annotations

import pytest

from vidseq.params import ConfigError
from training.limits import Busy, DecodeGate, LimitExceeded, Limits


def test_environment_wins_over_model_config_over_defaults():
    limits = Limits.load({"VIDSEQ_MAX_ROWS": "4", "VIDSEQ_DECODE_TIMEOUT_S": "2.5"}, {"max_rows": 8, "max_frames": 50})
    assert (limits.max_rows, limits.max_frames, limits.decode_timeout_s) == (4, 50, 2.5)
    assert limits.max_pixels == Limits().max_pixels == 4096 * 2160


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"VIDSEQ_MAX_ROWS": "many"}, "VIDSEQ_MAX_ROWS must be a positive int, got 'many'"),
        ({"VIDSEQ_MAX_ROWS": "2.5"}, "VIDSEQ_MAX_ROWS must be a positive int, got '2.5'"),
        ({"VIDSEQ_MAX_PIXELS": "0"}, "VIDSEQ_MAX_PIXELS must be a positive int, got 0"),
        ({"VIDSEQ_DECODE_TIMEOUT_S": "-1"}, "VIDSEQ_DECODE_TIMEOUT_S must be a positive float, got -1.0"),
    ],
)
def test_a_bad_value_is_a_config_error_naming_the_variable(environ, message):
    with pytest.raises(ConfigError) as error:
        Limits.load(environ)
    assert str(error.value) == message


def test_the_request_budget_stays_below_the_servers_own_timeout():
    assert Limits.load({"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "30"}).request_timeout_s == pytest.approx(24.0)
    assert Limits.load({"MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT": "600"}).request_timeout_s == 50.0


def test_rows_and_bytes_are_checked_before_any_decoding():
    limits = Limits(max_rows=2, max_request_bytes=10)
    limits.check_request(["abcd", b"efgh"])
    with pytest.raises(LimitExceeded, match=r"3 rows, over the limit of 2 \(VIDSEQ_MAX_ROWS\)"):
        limits.check_request(["a", "b", "c"])
    with pytest.raises(LimitExceeded, match=r"11 bytes, over the limit of 10 \(VIDSEQ_MAX_REQUEST_BYTES\)"):
        limits.check_request(["abcdef", "ghijk"])


def test_the_gate_refuses_at_once_when_every_slot_is_taken():
    gate = DecodeGate(1)
    with gate.slot():
        with pytest.raises(Busy, match=r"busy: 1 request\(s\) already decoding"):
            with gate.slot():
                pass
    with gate.slot():  # released again
        pass


def test_decode_limits_name_the_variables_or_the_given_flags():
    decode = Limits(max_pixels=100, max_seconds=5.0).decode_limits()
    assert (decode.max_pixels, decode.max_duration_s, decode.timeout_s) == (100, 5.0, 20.0)
    assert decode.setting("max_pixels") == "VIDSEQ_MAX_PIXELS"
    assert decode.setting("timeout_s") == "VIDSEQ_DECODE_TIMEOUT_S"
    flagged = Limits().decode_limits(timeout_s=1.0, names={"max_pixels": "--max-pixels"})
    assert flagged.setting("max_pixels") == "--max-pixels" and flagged.timeout_s == 1.0
