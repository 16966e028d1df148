"""whisperd.decoder_client's pure parts: the derived decode deadline and how a helper ended."""

from __future__ import annotations

import signal

from whisperd.decoder_client import DecodeFailure, describe_exit, timeout_for


def test_timeout_grows_one_second_per_minute_of_allowed_audio():
    assert timeout_for(0.0) == 10.0
    assert timeout_for(600.0) == 20.0
    assert timeout_for(4 * 3600.0) == 250.0


def test_describe_exit_names_the_signal_or_the_code():
    assert describe_exit(None) == "still running"
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


def test_decode_failure_keeps_kind_and_detail():
    e = DecodeFailure("timeout", "decoding took longer than 5 s")
    assert (e.kind, e.detail, str(e)) == (
        "timeout",
        "decoding took longer than 5 s",
        "timeout: decoding took longer than 5 s",
    )
