"""Settling a run (worker.queue.settling): rate limits and busy users defer, using no retry;
a transient failure retries only the events left, a refusal dead-letters only its own."""

from __future__ import annotations

from itertools import pairwise

import responses
from celery import states

import worker.connectors.braze
import worker.queue.patience
import worker.queue.tasks
from tests.unit.conftest import hold_elsewhere
from tests.unit.queue.harness import (
    BREVO_UPDATE,
    SUCCESS,
    TENANT,
    UNAVAILABLE,
    USER,
    Harness,
    answers,
    braze_config,
    brevo_config,
    event,
    event_of,
)
from worker.core.errors import RetryableError
from worker.queue.tasks import deliver

# -- pacing: rate limits and busy users defer, they use no retry ----------------------------------


def test_calls_to_one_brevo_account_are_spaced_by_its_rate_without_using_retries(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness)
    answers(harness, mocked, [(204, None, {})], method="PUT", url=BREVO_UPDATE)
    for n in range(4):
        harness.worker.send(deliver, [event_of(f"user{n}@example.com")], connector_id)

    harness.worker.drain()

    offsets = harness.offsets()
    assert len(offsets) == 4
    gaps = [b - a for a, b in pairwise(offsets)]
    assert all(gap >= 0.1 for gap in gaps), gaps  # Brevo's default: 10 calls per second
    assert harness.broker.retries() == []
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 4}
    assert harness.rt.outbox.pending() == 0


def test_a_spent_quota_in_the_answer_holds_the_next_call_until_the_window_resets(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness)
    spent = {"x-sib-ratelimit-limit": "10", "x-sib-ratelimit-remaining": "0"}
    answers(
        harness,
        mocked,
        [(204, None, {**spent, "x-sib-ratelimit-reset": "5"}), (204, None, {})],
        method="PUT",
        url=BREVO_UPDATE,
    )
    harness.worker.send(deliver, [event_of("a@example.com")], connector_id)
    harness.worker.send(deliver, [event_of("b@example.com")], connector_id)

    harness.worker.drain()

    assert harness.offsets()[1] >= 5.0
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 2}


def test_a_user_another_delivery_holds_is_deferred_with_its_attempts_not_retried(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {}), (201, SUCCESS, {})])
    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.execute(harness.broker.queue.pop())  # 503: a retry is scheduled
    release = hold_elsewhere(harness.rt.state, TENANT, connector_id, USER)

    [retry] = harness.broker.queue
    harness.clock.now = retry.due
    harness.worker.execute(harness.broker.queue.pop())
    [deferred] = harness.broker.queue
    assert (deferred.retries, deferred.kwargs) == (retry.retries, retry.kwargs)
    assert len(mocked.calls) == 1

    release()
    harness.worker.drain()
    assert len(mocked.calls) == 2
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.rt.outbox.pending() == 0


def test_a_transient_failure_retries_only_the_events_left_and_a_refusal_only_its_own(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness, batch_size=1)
    harness.rt.settings.rate_limits["sendinblue"] = 1e6  # no pacing in the way here
    users = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    # a: 204, b: 400 (refused), c: 503 (down): c and d are left for the retry.
    refused = {"code": "invalid_parameter", "message": "bad attribute"}
    answers(
        harness,
        mocked,
        [(204, None, {}), (400, refused, {}), (503, None, {}), (204, None, {})],
        method="PUT",
        url=BREVO_UPDATE,
        takes=0.01,  # the clock moves on, so the next pacing slot is free
    )

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.RETRY, states.SUCCESS]
    retry = runs[1].message
    assert retry.args == ([event_of("c@example.com"), event_of("d@example.com")], connector_id)
    assert retry.retries == 1 and len(retry.kwargs["attempts"]) == 1
    called = [call.request.url.split("/contacts/")[1].split("?")[0] for call in mocked.calls]
    first_run, retry_run = ["a", "b", "c"], ["c", "d"]
    assert called == [f"{u}%40example.com" for u in [*first_run, *retry_run]]
    [entry] = harness.dead_letters()
    assert entry.user == "b@example.com" and "bad attribute" in entry.reason
    assert harness.rt.recorder.counts(TENANT, connector_id) == {
        "dead_lettered": 1,
        "delivered": 3,
    }
    assert harness.rt.outbox.pending() == 0
    # Should Celery report that first run as failed too (a hard time limit after the
    # answers came), b keeps its one entry: one per event and run, whichever path.
    first = runs[0].message
    worker.queue.tasks._dead_letter_failures(
        sender=deliver,
        task_id=first.task_id,
        exception=RetryableError("reported late"),
        args=first.args,
        kwargs=first.kwargs,
    )
    assert [e.id for e in harness.dead_letters()] == [entry.id]
