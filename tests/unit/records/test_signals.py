"""The inbox of a tool's refusals (worker.records.signals): stored once, taken into a
processing list so that a worker dying mid-way loses nothing, put back or recovered."""

from __future__ import annotations

from datetime import UTC, datetime

import fakeredis

from worker.records.signals import INBOX, PROCESSING, SignalInbox


def inbox() -> SignalInbox:
    return SignalInbox(fakeredis.FakeRedis())


def test_an_entry_taken_is_held_in_processing_until_done() -> None:
    box = inbox()
    box.redis.rpush(INBOX, b"first", b"second")

    taken = box.take()

    assert taken == b"first"
    assert box.redis.lrange(PROCESSING, 0, -1) == [b"first"]
    assert box.redis.lrange(INBOX, 0, -1) == [b"second"]
    box.done(taken)
    assert box.redis.lrange(PROCESSING, 0, -1) == []
    assert box.take() == b"second"
    assert box.take() is None


def test_an_entry_put_back_is_the_next_one_taken() -> None:
    box = inbox()
    box.redis.rpush(INBOX, b"first", b"second")

    box.put_back(box.take())

    assert box.redis.lrange(PROCESSING, 0, -1) == []
    assert box.take() == b"first"


def test_what_a_dead_worker_held_is_recovered_in_order_before_the_rest() -> None:
    box = inbox()
    box.redis.rpush(INBOX, b"a", b"b", b"c")
    box.take(), box.take()  # a worker took two, then died

    assert box.recover() == 2

    assert box.redis.lrange(PROCESSING, 0, -1) == []
    assert [box.take() for _ in range(3)] == [b"a", b"b", b"c"]


def test_nothing_is_stored_for_no_signal() -> None:
    box = inbox()
    assert box.store("acme", [], datetime.now(UTC)) == 0
    assert box.redis.llen(INBOX) == 0
