"""Caps on long-lived streams, per token and in all, for every process of a control plane."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storefleet.errors import TooManyError
from storefleet.services.streams import StreamGate


def test_caps_count_the_streams_of_every_process(tmp_path: Path) -> None:
    """Two gates on one file stand for two worker processes: a token's streams and the total
    are counted across both."""
    path = tmp_path / "shared" / "streams"
    here = StreamGate(per_token=2, total=3, path=path)
    there = StreamGate(per_token=2, total=3, path=path)
    with here.hold("token-a", "stream"), there.hold("token-a", "stream"):
        assert here.open_count("token-a") == there.open_count("token-a") == 2
        with (
            pytest.raises(TooManyError, match="STOREFLEET_STREAMS_PER_TOKEN"),
            there.hold("token-a", "stream"),
        ):
            pass
        with here.hold("token-b", "stream"):
            assert there.open_count() == 3
            with (
                pytest.raises(TooManyError, match="STOREFLEET_STREAMS_MAX"),
                there.hold("token-c", "stream"),
            ):
                pass
    assert here.open_count() == there.open_count() == 0
    with here.hold("token-a", "stream"), here.hold("token-a", "stream"):
        assert there.open_count("token-a") == 2  # one slot, counted twice
    assert there.open_count("token-a") == 0


def test_the_streams_of_a_process_that_died_are_given_back(tmp_path: Path) -> None:
    path = tmp_path / "streams"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from storefleet.services.streams import StreamGate
                gate = StreamGate(per_token=1, total=5, path=Path({str(path)!r}))
                with gate.hold("token-a", "stream"):
                    print("holding", flush=True)
                    time.sleep(600)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "holding"
        here = StreamGate(per_token=1, total=5, path=path)
        with pytest.raises(TooManyError), here.hold("token-a", "stream"):
            pass
        os.kill(child.pid, signal.SIGKILL)  # it never gives its slot back itself
        child.wait(30)
        assert here.open_count("token-a") == 0
        with here.hold("token-a", "stream"):
            assert here.open_count() == 1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
