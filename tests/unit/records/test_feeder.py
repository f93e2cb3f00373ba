"""The bulk feeder: tenants' parked loads fed in turn, within the bound of bulk messages
queued, and never lost when a feeder dies mid-way (worker.records.feeder)."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest

from worker.records import feeder
from worker.records.feeder import QUEUED, TENANTS, BulkFeeder, parked_key


@pytest.fixture
def bulk() -> BulkFeeder:
    return BulkFeeder(fakeredis.FakeRedis())


class Published(list):
    def __call__(self, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.append(task_id)


def park(bulk: BulkFeeder, tenant: str, count: int) -> None:
    bulk.park(
        tenant,
        [(f"{tenant}-{n}", "prefsync.route", [[{"n": n}]], {"lane": "bulk"}) for n in range(count)],
    )


def test_tenants_are_fed_in_turn_one_message_each(bulk: BulkFeeder) -> None:
    park(bulk, "a", 50)
    park(bulk, "b", 3)
    published = Published()

    assert bulk.feed(published, queued=QUEUED - 8) == 8

    assert published == ["a-0", "b-0", "a-1", "b-1", "a-2", "b-2", "a-3", "a-4"]
    assert bulk.parked() == {"a": 45}  # b is done and out of the rotation


def test_a_tenant_that_parks_later_is_fed_at_the_next_turn_not_after_the_first_load(
    bulk: BulkFeeder,
) -> None:
    park(bulk, "a", 1000)
    published = Published()
    bulk.feed(published, queued=QUEUED - 10)
    park(bulk, "b", 2)

    bulk.feed(published, queued=QUEUED - 3)

    assert published[10:] == ["b-0", "a-10", "b-1"]


def test_nothing_is_fed_while_the_bulk_queues_hold_the_bound(bulk: BulkFeeder) -> None:
    park(bulk, "a", 5)
    published = Published()

    assert bulk.feed(published, queued=QUEUED) == 0
    assert bulk.feed(published, queued=QUEUED - 2) == 2
    assert bulk.parked() == {"a": 3}


def test_a_message_stays_parked_when_its_publish_fails(bulk: BulkFeeder) -> None:
    park(bulk, "a", 2)

    def broker_down(*_: Any) -> None:
        raise ConnectionError("broker unreachable")

    with pytest.raises(ConnectionError):
        bulk.feed(broker_down, queued=0)

    assert bulk.parked() == {"a": 2}
    published = Published()
    assert bulk.feed(published, queued=0) == 2  # the lock was let go
    assert published == ["a-0", "a-1"]


def test_a_feeder_that_died_after_publishing_leaves_the_message_parked_not_lost(
    bulk: BulkFeeder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Published, then the feeder died before it took the message off: it is published
    # again (a duplicate idempotency absorbs); a second feeder that ran meanwhile and took it
    # off does not make the first take off the next one.
    park(bulk, "a", 2)
    published = Published()

    def then_another_feeder_takes_it(*message: Any) -> None:
        published(*message)
        bulk.redis.lpop(parked_key("a"))  # the other feeder's pop of the same message

    bulk.feed(then_another_feeder_takes_it, queued=QUEUED - 1)

    assert published == ["a-0"]
    assert bulk.parked() == {"a": 1}
    bulk.feed(published, queued=0)
    assert published == ["a-0", "a-1"]


def test_one_feeder_at_a_time(bulk: BulkFeeder) -> None:
    park(bulk, "a", 2)
    bulk.redis.set(feeder.FEEDER, 1)

    assert bulk.feed(Published(), queued=0) == 0
    assert bulk.parked() == {"a": 2}


def test_a_tenant_with_nothing_parked_leaves_the_rotation(bulk: BulkFeeder) -> None:
    park(bulk, "a", 1)
    bulk.redis.delete(parked_key("a"))  # emptied some other way

    assert bulk.feed(Published(), queued=0) == 0
    assert bulk.redis.zcard(TENANTS) == 0


HOSTILE = ["tenants", "turn", "feeder", "a:b", "{x}", "*", "a b", '["a"]', "t" * 1024]


def test_no_tenant_id_reaches_the_feeders_own_keys_or_another_tenants_list(
    bulk: BulkFeeder,
) -> None:
    for tenant in ["acme", *HOSTILE]:
        park(bulk, tenant, 2)
    published = Published()

    assert bulk.feed(published, queued=0) == QUEUED
    bulk.feed(published, queued=0)

    assert sorted(published) == sorted(f"{t}-{n}" for t in ["acme", *HOSTILE] for n in range(2))
    assert bulk.parked() == {}
    names = {name.decode() for name in bulk.redis.keys("*")}
    assert names <= {feeder.TURN}


def test_lists_the_previous_release_parked_are_fed_first_then_the_new_ones(
    bulk: BulkFeeder,
) -> None:
    older = [("old-0", "prefsync.route", [[{"n": 0}]], {"lane": "bulk"})]
    bulk.redis.rpush(
        "prefsync:bulk:acme",
        *[json.dumps({"id": i, "name": n, "args": a, "kwargs": k}) for i, n, a, k in older],
    )
    bulk.redis.zadd(TENANTS, {"acme": 0})
    park(bulk, "acme", 2)
    assert bulk.parked() == {"acme": 3}
    published = Published()

    assert bulk.feed(published, queued=0) == 3

    assert published == ["old-0", "acme-0", "acme-1"]
    assert bulk.parked() == {}
    assert not bulk.redis.exists("prefsync:bulk:acme", parked_key("acme"))
