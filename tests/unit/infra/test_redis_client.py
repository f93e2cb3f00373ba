"""One clock: Redis's (worker.infra.redis_client.RedisClock), which retry schedules and pacing
slots are computed on (worker.core.retries.clock), whatever a host's own clock says."""

from __future__ import annotations

import json
import os
import time

import fakeredis
import pytest
import redis

from worker.core import retries
from worker.delivery import runtime as runtime_module
from worker.delivery.runtime import Runtime, runtime
from worker.infra.redis_client import SENTINEL_KWARGS, RedisClock
from worker.infra.settings import Settings


def redis_time(client: redis.Redis) -> float:
    seconds, microseconds = client.time()
    return seconds + microseconds / 1e6


@pytest.fixture
def skewed(monkeypatch: pytest.MonkeyPatch):
    """Offset this host's wall clock by ``skewed(seconds)``."""
    real = time.time

    def skew(seconds: float) -> None:
        monkeypatch.setattr(time, "time", lambda: real() + seconds)

    return skew


@pytest.mark.parametrize("offset", [2.0, -300.0, 300.0])
def test_a_host_whose_clock_is_off_reads_the_time_of_redis(skewed, offset):
    client = fakeredis.FakeRedis()
    clock = RedisClock(client)
    skewed(offset)
    assert clock.now() == pytest.approx(redis_time(client), abs=0.05)


def test_the_retry_schedule_and_pacing_follow_the_runtime_clock(skewed, monkeypatch):
    monkeypatch.setattr(retries, "_now", retries._now)  # restored after the test
    monkeypatch.setattr(runtime_module, "_runtime", None)
    client = fakeredis.FakeRedis()
    monkeypatch.setattr(Runtime, "clock", property(lambda self: RedisClock(client)))
    monkeypatch.setattr(runtime_module, "get_settings", Settings)
    skewed(300.0)

    runtime()

    assert retries.clock() == pytest.approx(redis_time(client), abs=0.05)
    assert runtime_module._runtime[0] == os.getpid()


def test_an_unreachable_redis_carries_the_last_reading_on_and_asks_again_later():
    client = fakeredis.FakeRedis()
    clock = RedisClock(client, refresh=0.0)
    first = clock.now()

    def down() -> None:
        raise redis.ConnectionError("down")

    client.time = down  # type: ignore[method-assign]
    assert clock.now() >= first
    assert clock.now() == pytest.approx(time.time(), abs=0.05)


def test_the_sentinel_options_retry_nothing_and_are_plain_data():
    # They are part of the broker's transport options, which a worker's `stats` (Flower's
    # worker page, `celery inspect stats`) serialises as JSON.
    assert json.loads(json.dumps(SENTINEL_KWARGS)) == SENTINEL_KWARGS
    connection = redis.Redis(**SENTINEL_KWARGS).connection_pool.make_connection()
    assert connection.retry.get_retries() == 0
