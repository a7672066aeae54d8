"""Which process of a control plane runs the duties that act for the whole fleet.

Every process of a control plane (its worker processes, `STOREFLEET_WORKERS`) serves requests
and keeps its own operations' locks alive (`LeaseKeeper`). The duties that act for the whole
fleet, the reconciler, webhook deliveries, scheduled backups and the warm pool's refills, run in
one process at a time: the one holding the `flock` of `<data_dir>/shared/duties.lock`. The
others try again every `retry_s`; a process that ends, however it ends, lets go of the lock
with its file, and another takes the duties over at its next try. (They are safe to run in
several control planes at once, on one registry; one per host is what saves the work.)
Until it holds the duties, a process writes its own counts of refused requests to the audit
log at each try (where the reconciler runs, it does that at each pass).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class Duties:
    def __init__(
        self,
        lock_path: Path,
        *,
        start: Callable[[], None],
        waiting: Callable[[], None],
        retry_s: float = 1.0,
    ) -> None:
        self.lock_path = lock_path
        self.retry_s = retry_s
        self._start = start
        self._waiting = waiting
        self._fd: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this process runs the duties."""
        return self._fd is not None

    def start(self) -> None:
        """Take the duties now if no other process holds them, else keep trying in a thread."""
        if self._take():
            return
        log.info("another process of this control plane runs the reconciler: waiting")
        self._thread = threading.Thread(target=self._loop, name="duties", daemon=True)
        self._thread.start()

    def _take(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        log.info(
            "this process runs the reconciler and the fleet's other duties (pid %d)", os.getpid()
        )
        self._start()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.retry_s):
            try:
                if self._take():
                    return
                self._waiting()
            except Exception:  # e.g. the registry is briefly away: try again
                log.exception("taking over the control plane's duties failed")

    def stop(self) -> None:
        """Stop trying; the lock goes when the process ends (after its duties stopped)."""
        self._stop.set()

    def release(self) -> None:
        """Let the duties go (once they are stopped)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
