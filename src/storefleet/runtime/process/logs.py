"""A store's logs on the process runtime: its log files, read from the end, followed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

from storefleet.runtime import logfiles
from storefleet.runtime.process.stack import (
    ProcessStack,
    after_since,
)


class ProcessLogs(ProcessStack):
    def services(self) -> tuple[str, ...]:
        return ("backend", "supervisor")

    def logs(
        self,
        store_id: str,
        *,
        service: str,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        path = self.workspace(store_id) / f"{service}.log"
        if not path.is_file():
            return
        offset = path.stat().st_size
        yield from logfiles.tail_lines(path, tail, lambda line: after_since(line, since))
        if follow:
            yield from logfiles.follow(path, offset)
