"""A store's logs, read from its runtime, with every secret redacted before they leave.

Redacted: the store's own secrets (exact values, e.g. its database password), credentials in
URLs (`scheme://user:secret@host`), and `password=` / `token=` / `secret=` style assignments
and bearer tokens. A line is redacted as a whole before it is sent, also when following.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

from storefleet.errors import InvalidInputError
from storefleet.services.steps import Toolkit

REDACTED = "[redacted]"
_PATTERNS = (
    (re.compile(r"(?i)(://[^:/@\s]+:)[^@\s]+@"), rf"\g<1>{REDACTED}@"),
    (
        re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key)(\s*[=:]\s*)[^\s,;&\"']+"),
        rf"\g<1>\g<2>{REDACTED}",
    ),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+"), rf"\g<1>{REDACTED}"),
)
MAX_TAIL = 10_000


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        # longest first, so that a secret containing another is replaced whole
        self.secrets = sorted((s for s in secrets if len(s) >= 6), key=len, reverse=True)

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            line = pattern.sub(replacement, line)
        return line


class LogService:
    def __init__(self, kit: Toolkit) -> None:
        self.kit = kit
        self.driver = kit.driver

    def services(self) -> list[str]:
        """The services a store's stack has on this runtime (the first is the default)."""
        logs = self.kit.caps.logs
        return list(logs.services()) if logs is not None else []

    def open(
        self,
        store_id: str,
        *,
        service: str | None,
        tail: int | None,
        since: datetime | None,
        follow: bool,
    ) -> Iterator[str | None]:
        """Check the request now (so that errors get a status), then stream lines. With
        `follow`, None is yielded while nothing new comes (at least every RECHECK_S), so the
        caller can look at its client; closing the iterator releases what the runtime holds."""
        self.kit.load(store_id)
        reader = self.kit.caps.need_logs()
        services = reader.services()
        chosen = service or services[0]
        if chosen not in services:
            raise InvalidInputError(
                f"service {chosen!r} is not part of a {self.driver.name} stack; "
                f"choose from {', '.join(services)}",
                code="unknown_service",
            )
        if tail is not None and not 0 <= tail <= MAX_TAIL:
            raise InvalidInputError(f"tail must be between 0 and {MAX_TAIL}")
        redact = Redactor(self.kit.secrets.existing(store_id))
        lines = reader.logs(store_id, service=chosen, tail=tail, since=since, follow=follow)
        return _redacted(lines, redact)


def _redacted(lines: Iterator[str | None], redact: Redactor) -> Iterator[str | None]:
    try:
        for line in lines:
            yield None if line is None else redact(line)
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
