"""Exponential back-off, one rule for every retry loop: the reconciler's repairs, webhook
deliveries and the process runtime's supervisor (standard library only: the supervisor imports
it beside each store)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """`initial_s` after the first failure, doubling after each one, never above `max_s`."""

    initial_s: float
    max_s: float
    factor: float = 2.0

    def delay(self, failures: int) -> float:
        """How long to wait after `failures` failures in a row (0 or 1: `initial_s`)."""
        delay = self.initial_s
        for _ in range(max(0, failures - 1)):  # no power: 10,000 failures must not overflow
            if delay >= self.max_s:
                break
            delay *= self.factor
        return float(min(delay, self.max_s))
