"""Dead-lettering (worker.queue.deadlettering): the failures the worker's parent process
reports, a retry Celery cannot publish, a hard time limit, attempts lost with their pool
child; one dead letter per event and run."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
import responses
from celery import states
from kombu.exceptions import EncodeError, OperationalError

from tests.unit.queue.harness import (
    START,
    SUCCESS,
    TENANT,
    UNAVAILABLE,
    Harness,
    Message,
    Outage,
    Run,
    answers,
    braze_config,
    cut_off_by_the_hard_limit,
    event,
    report_hard_limit,
)
from worker.queue.tasks import ScheduledTask, deliver

# -- failures the worker's parent process reports ----------------------------------------------


def second_attempt_whose_retry_cannot_be_published(
    harness: Harness,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> Run:
    """Run the second attempt of a failing delivery, whose retry Celery cannot publish
    (``error``): it rejects the message, which it would otherwise lose."""
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])
    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.execute(harness.broker.queue.pop())
    [first_retry] = harness.broker.queue
    harness.broker.queue.clear()

    def cannot_publish(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(ScheduledTask, "apply_async", cannot_publish)
    harness.clock.now = first_retry.due
    return harness.worker.execute(first_retry)


def test_a_retry_celery_cannot_publish_is_dead_lettered_once_with_every_attempt(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For a reason of its own, not Redis: the worker's parent reports the rejection as a
    # failure too, and it stays one dead letter.
    error = EncodeError("cannot serialize the retry")
    run = second_attempt_whose_retry_cannot_be_published(harness, mocked, monkeypatch, error)

    assert len(mocked.calls) == 2
    assert (run.settled, run.requeue) == ("reject", False)
    [entry] = harness.dead_letters()
    assert [a.status for a in entry.attempts] == [503, 503]
    assert "EncodeError" in entry.reason
    assert harness.rt.recorder.counts(TENANT, "braze-eu") == {"dead_lettered": 1}
    assert harness.rt.outbox.pending() == 0


@pytest.mark.parametrize(
    "error",
    [
        # What kombu raises once its publish retry policy gave up.
        OperationalError("Error 111 connecting to redis:6379. Connection refused."),
        redis.exceptions.ConnectionError("Error 111 connecting to redis:6379"),
    ],
    ids=["kombu", "redis"],
)
def test_a_retry_that_cannot_be_published_while_redis_is_down_puts_the_message_back(
    harness: Harness,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    run = second_attempt_whose_retry_cannot_be_published(harness, mocked, monkeypatch, error)

    # Unacknowledged, to run again with the attempts it carries: Redis is to blame.
    assert (run.state, run.settled, run.requeue) == (states.REJECTED, "reject", True)
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 1


@pytest.mark.parametrize("redis_restarts", [False, True], ids=["", "while-redis-restarts"])
def test_a_hard_time_limit_is_dead_lettered_with_the_attempts_the_message_carried(
    harness: Harness, outage: Outage, redis_restarts: bool
) -> None:
    connector_id = braze_config(harness)
    carried = [
        {"at": START, "status": 503, "error": "Braze is unavailable (HTTP 503)"},
        {"at": START + 10, "status": None, "error": "timed out after 10.0s"},
    ]
    settle = cut_off_by_the_hard_limit(
        harness, ([event()], connector_id), carried, outage if redis_restarts else None
    )

    assert bool(outage.waits) == redis_restarts  # it waited for Redis to write the entry
    [entry] = harness.dead_letters()
    assert entry.connector_id == connector_id
    assert [(a.at, a.status) for a in entry.attempts[:2]] == [(START, 503), (START + 10, None)]
    assert len(entry.attempts) == 3
    assert "TimeLimitExceeded" in entry.reason
    assert settle == [("ack", False)]  # not requeued: a message that hangs does not loop
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"dead_lettered": 1}
    assert harness.rt.outbox.pending() == 0


def test_attempts_lost_with_their_pool_child_are_counted_in_the_dead_letter(
    harness: Harness,
) -> None:
    connector_id = braze_config(harness)
    # Celery republished this message twice after a lost pool child (retries 1 and 2),
    # which cannot add to the carried attempts: only the first attempt is on record.
    message = Message(
        task=deliver.name,
        args=([event()], "no-such-connector"),
        kwargs={"attempts": [{"at": START, "status": 503, "error": "HTTP 503"}]},
        retries=3,
        task_id=str(uuid.uuid4()),
        countdown=None,
        published_at=START + 50,
    )
    harness.clock.now = START + 50
    harness.worker.execute(message)

    [entry] = harness.dead_letters()
    assert [a.error for a in entry.attempts[1:3]] == [
        "worker lost during this attempt (no record)"
    ] * 2
    assert len(entry.attempts) == 4
    assert "not configured" in entry.reason
    assert connector_id != entry.connector_id


def test_a_hard_time_limit_reported_after_the_run_wrote_its_retry_is_not_dead_lettered(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {}), (201, SUCCESS, {})])
    harness.worker.send(deliver, [event()], connector_id)
    first = harness.broker.queue[0]
    harness.worker.execute(first)  # 503: its retry is written and published

    # The worker's parent had not read that result when its timer of the hard limit fired
    # (it was reconnecting to Redis): it reports the run as cut off.
    report_hard_limit(harness, first)
    assert harness.dead_letters() == []

    harness.broker.queue.remove(first)
    harness.worker.drain()
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 0
