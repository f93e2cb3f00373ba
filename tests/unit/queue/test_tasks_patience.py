"""How long a task waits for Redis (worker.queue.tasks.patiently): until its deadline, not
past it."""

from __future__ import annotations

import time

import pytest
import redis

from worker.queue.tasks import REDIS_PATIENCE, patiently


def test_waits_for_redis_end_at_the_deadline_not_after_the_usual_patience():
    tries = []

    def unreachable() -> None:
        tries.append(time.monotonic())
        raise redis.exceptions.ConnectionError("down")

    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        patiently(unreachable, until=started + 0.5)
    assert time.monotonic() - started < 0.6 < REDIS_PATIENCE
    assert len(tries) >= 2
