"""The one error family of storefleet. The API maps `kind` to an HTTP status in one place."""

from __future__ import annotations

from enum import Enum
from typing import Any


class ErrorKind(Enum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    INVALID = "invalid"
    CAPACITY = "capacity"
    BUSY = "busy"
    RUNTIME = "runtime"
    FORBIDDEN = "forbidden"
    TIMEOUT = "timeout"
    TOO_MANY = "too_many"
    UNSUPPORTED = "unsupported"


class StorefleetError(Exception):
    """Base of every error storefleet raises on purpose.

    `message` is written for a person; `code` is stable for programs; `extra` holds
    non-secret context (never a secret) that is returned with the error.
    """

    kind: ErrorKind = ErrorKind.RUNTIME
    code: str = "error"
    # Whether doing the same again later may succeed: the reconciler retries these with
    # back-off; one that is not is reported and not retried until an operation changes the store.
    retryable: bool = True

    def __init__(self, message: str, *, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.extra = extra


class NotFoundError(StorefleetError):
    kind = ErrorKind.NOT_FOUND
    code = "not_found"


class ForbiddenError(StorefleetError):
    kind = ErrorKind.FORBIDDEN
    code = "forbidden"


class ConflictError(StorefleetError):
    kind = ErrorKind.CONFLICT
    code = "conflict"


class ConcurrentChangeError(ConflictError):
    """A record changed or vanished under a transaction (another request won the race)."""

    code = "concurrent_change"


class UnsupportedError(StorefleetError):
    """The runtime in use cannot do this (501): the message says which runtime lacks what."""

    kind = ErrorKind.UNSUPPORTED
    code = "unsupported"


class InvalidInputError(StorefleetError):
    kind = ErrorKind.INVALID
    code = "invalid"
    retryable = False


class CapacityError(StorefleetError):
    kind = ErrorKind.CAPACITY
    code = "ports_exhausted"


class BusyError(StorefleetError):
    """Another operation holds the store and did not finish in time."""

    kind = ErrorKind.BUSY
    code = "busy"


class RuntimeFailure(StorefleetError):
    """The runtime (processes, Docker) failed to do what was asked. Retrying may help (a
    health check that timed out, an engine that was down)."""

    kind = ErrorKind.RUNTIME
    code = "runtime_failure"


class PermanentFailure(RuntimeFailure):
    """A runtime failure that doing the same again cannot mend (a version the runtime does not
    have, a stack missing a secret): reported, never retried by the reconciler until an
    operation changes the store."""

    retryable = False


class TemporaryFailure(RuntimeFailure):
    """A runtime failure worth retrying, but not before `delay_s` (e.g. the engine is busy)."""

    def __init__(self, message: str, *, delay_s: float, **extra: Any) -> None:
        super().__init__(message, **extra)
        self.delay_s = delay_s


class OperationCancelledError(StorefleetError):
    """The operation was cancelled and rolled back."""

    kind = ErrorKind.CONFLICT
    code = "cancelled"


class TooManyError(StorefleetError):
    """A per-client limit (concurrent streams, failed logins) was reached: retry later."""

    kind = ErrorKind.TOO_MANY
    code = "too_many_requests"


class DeadlineExceeded(RuntimeFailure):
    kind = ErrorKind.TIMEOUT
    code = "deadline_exceeded"
