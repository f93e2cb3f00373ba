"""Publishing through the outbox (worker.queue.publishing): a message stays in it until it
ended, or is published again."""

from __future__ import annotations

from typing import Any

import responses

from tests.unit.queue.harness import (
    UNAVAILABLE,
    Harness,
    answers,
    braze_config,
    event,
)
from worker.queue.tasks import deliver


def test_a_task_waiting_for_its_retry_stays_in_the_outbox_until_it_is_due(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])
    harness.worker.send(deliver, [event()], connector_id)
    first = harness.worker.execute(harness.broker.queue.pop())  # fails; its retry is queued
    published = []

    def record(task_id: str, *_: Any) -> None:
        published.append(task_id)

    # The retry waits 10 s: until then plus the grace (the visibility timeout), it is not lost.
    grace = harness.rt.settings.visibility_timeout
    assert harness.rt.outbox.sweep(harness.clock() + 9 + grace, record) == 0
    assert harness.rt.outbox.sweep(harness.clock() + 10 + grace, record) == 1
    assert published == [first.message.task_id]
