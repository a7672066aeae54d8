from __future__ import annotations

from storefleet.backoff import Backoff


def test_doubles_from_initial_and_stops_at_the_ceiling() -> None:
    rule = Backoff(initial_s=10, max_s=300)
    assert [rule.delay(n) for n in (0, 1, 2, 3, 5, 6)] == [10, 10, 20, 40, 160, 300]
    assert rule.delay(10_000) == 300  # a long failure streak neither overflows nor grows


def test_the_three_retry_loops_share_it() -> None:
    from storefleet.services.webhooks import RetryPolicy

    assert RetryPolicy(initial_s=1, max_s=8).delay(4) == Backoff(1, 8).delay(4) == 8
