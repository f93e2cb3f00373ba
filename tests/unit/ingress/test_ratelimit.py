"""Access tokens per client id per minute (worker.ingress.ratelimit), on fakeredis."""

from __future__ import annotations

import fakeredis

from worker.ingress.ratelimit import KEY_PREFIX, WINDOW_SECONDS, TokenRateLimit


def test_a_client_over_its_rate_waits_for_the_end_of_its_minute() -> None:
    limit = TokenRateLimit(fakeredis.FakeRedis(), per_minute=3)

    waits = [limit.wait("psc_a") for _ in range(5)]

    assert waits[:3] == [0, 0, 0]
    assert all(0 < wait <= WINDOW_SECONDS for wait in waits[3:])
    # Another client has its own count.
    assert limit.wait("psc_b") == 0


def test_the_count_starts_again_when_the_minute_ends() -> None:
    redis = fakeredis.FakeRedis()
    limit = TokenRateLimit(redis, per_minute=1)
    assert limit.wait("psc_a") == 0
    assert limit.wait("psc_a") > 0

    redis.delete(KEY_PREFIX + "psc_a")  # what the key's expiry does a minute on

    assert limit.wait("psc_a") == 0
    assert 0 < redis.ttl(KEY_PREFIX + "psc_a") <= WINDOW_SECONDS
