"""Control-plane logging: JSON lines (one object per record) or human-readable text.

The store id and the operation id of the work in progress ride on context variables, set by
`bound(...)` around an operation; every record logged inside carries them as `store_id` and
`op_id`, whatever module logs it. `configure("auto")` picks text on a terminal, JSON otherwise.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["auto", "json", "text"]

_store_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("store_id", default=None)
_op_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("op_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=` and is kept.
# `color_message` is uvicorn's copy of the message with ANSI colours: never in a JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@contextmanager
def bound(*, store_id: str | None = None, op_id: str | None = None) -> Iterator[None]:
    """Records logged inside carry `store_id` / `op_id` (in this thread or task)."""
    tokens = []
    if store_id is not None:
        tokens.append((_store_id, _store_id.set(store_id)))
    if op_id is not None:
        tokens.append((_op_id, _op_id.set(op_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Stamps the bound store and operation ids on each record (unless it names its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "store_id", None) is None:
            record.store_id = _store_id.get()
        if getattr(record, "op_id", None) is None:
            record.op_id = _op_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _ANSI.sub("", record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and value is not None and key not in doc:
                doc[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{key}={getattr(record, key)}"
            for key in ("store_id", "op_id")
            if getattr(record, key, None)
        ]
        return f"{text} [{' '.join(ids)}]" if ids else text


def configure(fmt: LogFormat = "auto", level: str = "INFO") -> None:
    """Route every logger (uvicorn's included) to stderr in the chosen format."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
