"""Log files of the process runtime: tails read from the end, rotation, bounded follows."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path

from storefleet.runtime import logfiles
from storefleet.runtime.process.supervisor import Supervisor


def test_a_tail_reads_from_the_end_only(tmp_path: Path) -> None:
    path = tmp_path / "backend.log"
    with path.open("wb") as handle:
        handle.write(b"first\n")
        handle.truncate(64 * 1024**3)  # a 64 GiB hole: reading it whole would never end here
        handle.seek(0, 2)
        handle.write(b"\nlast but one\nlast\n")
    assert logfiles.tail_lines(path, 2, lambda _line: True) == ["last but one", "last"]
    assert logfiles.tail_lines(path, 0, lambda _line: True) == []


def test_tails_continue_into_the_rotated_file_and_stop_at_since(tmp_path: Path) -> None:
    path = tmp_path / "backend.log"
    logfiles.rotated(path).write_text("".join(f"old {i}\n" for i in range(5)))
    path.write_text("".join(f"new {i}\n" for i in range(3)))
    assert logfiles.tail_lines(path, 5, lambda _l: True) == [
        "old 3",
        "old 4",
        "new 0",
        "new 1",
        "new 2",
    ]
    assert logfiles.tail_lines(path, None, lambda line: line >= "new 1") == ["new 1", "new 2"]


def test_a_follow_yields_idle_ticks_and_follows_rotation(tmp_path: Path) -> None:
    path = tmp_path / "backend.log"
    path.write_text("before\n")
    lines = logfiles.follow(path)
    start = time.monotonic()
    assert next(lines) is None  # nothing new: a tick at once, never a blocking wait
    assert time.monotonic() - start < 1
    with path.open("a") as handle:
        handle.write("one\n")
    assert [x for x in (next(lines), next(lines)) if x] == ["one"]
    path.replace(logfiles.rotated(path))
    path.write_text("after rotation\n")
    got = [next(lines) for _ in range(4)]
    assert "after rotation" in got
    path.unlink()
    assert list(lines) in ([], [None])  # the file went (undeploy): the follow ends
    assert isinstance(lines, Generator)  # closing it releases the file
    lines.close()


def test_the_supervisor_rotates_the_backend_log(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text('{"argv": [], "env": {}, "log_max_bytes": 1000}')
    supervisor = Supervisor(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", "for i in range(200): print('line', i, 'x' * 40)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    supervisor.pump(child)
    child.wait()
    log = tmp_path / "backend.log"
    assert log.stat().st_size < 1100 and logfiles.rotated(log).stat().st_size >= 1000
    assert logfiles.tail_lines(log, 1, lambda _l: True)[0].endswith("line 199 " + "x" * 40)
