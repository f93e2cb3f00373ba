"""Redis down while an attempt is settled (worker.queue.patience): the retry waits for Redis,
or the message is put back; a SIGTERM waits until the retry is written."""

from __future__ import annotations

import json
import math
import time
from signal import SIGTERM, raise_signal
from signal import signal as set_signal_handler
from typing import Any

import pytest
import redis
import responses
from celery import states
from celery.exceptions import WorkerTerminate

import worker.connectors.braze
import worker.queue.patience
import worker.queue.tasks
from tests.unit.queue.harness import (
    SUCCESS,
    TRACK,
    Harness,
    Outage,
    braze_config,
    event,
)
from worker.queue.patience import REDIS_PATIENCE, patiently
from worker.queue.tasks import deliver

# -- Redis down while an attempt is settled ----------------------------------------------------


def braze_takes_the_call_as_redis_dies(
    harness: Harness, mocked: responses.RequestsMock, outage: Outage
) -> str:
    """A Braze connector whose call Braze takes while Redis dies: nothing after the call can
    be recorded. Returns the connector id."""

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        outage.begin()
        return 201, {"Content-Type": "application/json"}, json.dumps(SUCCESS)

    mocked.add_callback("POST", TRACK, callback=reply)
    return braze_config(harness)


def test_a_retry_written_while_redis_restarts_waits_for_redis_and_nothing_is_dead_lettered(
    harness: Harness, mocked: responses.RequestsMock, outage: Outage
) -> None:
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)

    run = harness.worker.execute(harness.broker.queue.pop())

    # The attempt failed on Redis; its retry waited for Redis and was written, outbox first.
    assert (run.state, run.settled) == (states.RETRY, "ack")  # replaced by its retry
    assert outage.lasts <= sum(outage.waits) <= REDIS_PATIENCE
    [retry] = harness.broker.retries()
    [attempt] = retry.kwargs["attempts"]
    assert "connection error" in attempt["error"].lower()
    entry = harness.rt.outbox.entry(retry.task_id)
    assert entry["kwargs"] == retry.kwargs
    assert harness.dead_letters() == []


@pytest.mark.parametrize(
    ("lasts", "soft_limit"),
    [(math.inf, math.inf), (math.inf, 1.0)],
    ids=["redis-stays-down", "soft-time-limit-first"],
)
def test_a_retry_that_cannot_be_written_puts_the_message_back_unacknowledged(
    harness: Harness,
    mocked: responses.RequestsMock,
    outage: Outage,
    lasts: float,
    soft_limit: float,
) -> None:
    outage.lasts, outage.soft_limit = lasts, soft_limit
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)

    run = harness.worker.execute(harness.broker.queue.pop())

    # Neither acknowledged nor a failure: the message runs again with what it carries.
    assert (run.state, run.settled, run.requeue) == (states.REJECTED, "reject", True)
    assert sum(outage.waits) <= REDIS_PATIENCE
    assert harness.broker.retries() == []
    harness.server.connected = True
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 1


def test_a_sigterm_while_the_retry_waits_for_redis_is_let_through_once_it_is_written(
    harness: Harness,
    mocked: responses.RequestsMock,
    outage: Outage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker terminates the tasks still running when its broker connection drops; in a
    # pool process, billiard's SIGTERM handler exits. Here it notes the retries published,
    # and exits with what the solo pool lets through.
    published_at_exit: list[int] = []

    def exit_pool_process(signum: int, _: Any) -> None:
        published_at_exit.append(len(harness.broker.retries()))
        raise WorkerTerminate(signum)

    def sleep(seconds: float) -> None:
        if not outage.waits:
            raise_signal(SIGTERM)
        outage.sleep(seconds)

    monkeypatch.setattr(worker.queue.patience, "sleep", sleep)
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)
    previous = set_signal_handler(SIGTERM, exit_pool_process)
    try:
        with pytest.raises(WorkerTerminate):
            harness.worker.execute(harness.broker.queue.pop())
    finally:
        set_signal_handler(SIGTERM, previous)

    assert published_at_exit == [1]
    assert harness.broker.retries()[0].kwargs["attempts"]  # ours, with the attempt


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
