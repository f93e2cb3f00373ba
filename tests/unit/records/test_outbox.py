"""The outbox: a task stays listed until it ends; what is overdue is published again, once
per sweep round, and a retry's wait postpones its due time."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from worker.records.outbox import SWEEPER, SWEEPER_EXPIRY, Outbox

ARGS = [[{"type": "event.created", "n": 1}, {"type": "event.created", "n": 2}], "braze"]


@pytest.fixture
def outbox() -> Outbox:
    return Outbox(fakeredis.FakeRedis(), grace=100)


class Published(list):
    def __call__(self, task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
        self.append((task_id, name, args, kwargs))


def test_only_overdue_tasks_are_published_again_with_what_they_carried(outbox: Outbox) -> None:
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=1000)
    outbox.add("t2", "prefsync.route", ARGS[:1], {}, now=1050)
    published = Published()

    assert outbox.sweep(1099, published) == 0
    assert outbox.sweep(1100, published) == 1

    assert published == [("t1", "prefsync.deliver", ARGS, {})]
    # Published again, it is due once more a grace period later, not at every sweep.
    assert outbox.sweep(1101, published) == 0
    assert outbox.sweep(1150, published) == 1  # t2
    assert outbox.sweep(1200, published) == 1  # t1 again: it still has not ended
    assert outbox.pending() == 2


def test_an_ended_task_is_never_published_again(outbox: Outbox) -> None:
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=1000)
    outbox.done("t1")
    published = Published()

    assert outbox.sweep(5000, published) == 0
    assert published == [] and outbox.pending() == 0


def test_a_retry_postpones_its_due_time_and_carries_its_attempts(outbox: Outbox) -> None:
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=1000)
    attempts = {"attempts": [{"at": 1000.0, "status": 503, "error": "down"}]}
    left = [ARGS[0][1:], "braze"]  # the events of the batch still to deliver
    outbox.rescheduled("t1", left, attempts, now=1010, wait=110)
    published = Published()

    assert outbox.sweep(1219, published) == 0  # 1010 + 110 + 100 = 1220
    assert outbox.sweep(1220, published) == 1
    assert published[0][2:] == (left, attempts)


def test_a_retry_of_a_task_the_outbox_never_saw_is_ignored(outbox: Outbox) -> None:
    outbox.rescheduled("old", ARGS, {"attempts": []}, now=1, wait=1)
    assert outbox.pending() == 0


def test_one_sweep_at_a_time_across_workers(outbox: Outbox) -> None:
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=0)
    outbox.redis.set(SWEEPER, 1)  # another worker is sweeping
    published = Published()

    assert outbox.sweep(1000, published) == 0
    outbox.redis.delete(SWEEPER)
    assert outbox.sweep(1000, published) == 1
    assert not outbox.redis.exists(SWEEPER)  # released after the round


def test_a_sweep_round_whose_worker_died_blocks_the_others_for_a_minute_at_most(
    outbox: Outbox,
) -> None:
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=0)

    def die(*_: Any) -> None:
        raise KeyboardInterrupt  # the worker stops mid-sweep

    with pytest.raises(KeyboardInterrupt):
        outbox.redis.delete = lambda *_: 0  # and never gets to release the round
        outbox.sweep(1000, die)
    assert 0 < outbox.redis.ttl(SWEEPER) <= SWEEPER_EXPIRY <= 60


def test_an_entry_that_ended_between_reads_is_not_counted_or_published(outbox: Outbox) -> None:
    outbox.redis.zadd("prefsync:outbox:due", {"gone": 0})
    published = Published()

    assert outbox.sweep(1000, published) == 0
    assert published == [] and outbox.pending() == 0


def test_an_overdue_task_is_not_copied_while_messages_wait_in_the_queue(outbox: Outbox) -> None:
    # A backlog older than the visibility timeout: the task may well be one of the queued
    # messages. Copying it would only grow the backlog; once the queue drains, it is sent.
    outbox.add("t1", "prefsync.deliver", ARGS, {}, now=1000)
    published = Published()

    assert outbox.sweep(5000, published, queued=3) == 0
    assert published == []
    assert outbox.sweep(5000, published, queued=0) == 1
