"""kombu's restore mutex without Lua (worker.queue.mutex)."""

from __future__ import annotations

import fakeredis
import pytest
from kombu.transport import redis as kombu_redis

from worker.queue.mutex import mutex


def test_one_holder_at_a_time_and_released_after() -> None:
    client = fakeredis.FakeRedis()
    with mutex(client, "unacked_mutex", 300):
        assert client.pttl("unacked_mutex") > 0
        with pytest.raises(kombu_redis.MutexHeld), mutex(client, "unacked_mutex", 300):
            pass
    assert client.get("unacked_mutex") is None


def test_a_mutex_that_expired_and_was_taken_by_another_is_left_to_it() -> None:
    client = fakeredis.FakeRedis()
    with mutex(client, "unacked_mutex", 300):
        client.set("unacked_mutex", "another holder's token")
    assert client.get("unacked_mutex") == b"another holder's token"
