"""Splitting (worker.queue.splitting): a batch that fails as a whole for no reason tied to
one event becomes a message per event; only the poison one is dead-lettered."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from celery import states
from celery.exceptions import SoftTimeLimitExceeded

import worker.connectors.braze
import worker.queue.patience
import worker.queue.tasks
from tests.unit.queue.harness import (
    START,
    SUCCESS,
    TENANT,
    Harness,
    answers,
    braze_config,
    cut_off_by_the_hard_limit,
    event_of,
)
from worker.connectors.base import Delivered
from worker.queue.tasks import deliver


def test_a_bug_in_a_batch_splits_it_and_dead_letters_only_the_event_that_causes_it(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    real = worker.connectors.braze.BrazeConnector.deliver_many

    def poisoned(self: Any, transport: Any, config: Any, changes: Any) -> Any:
        if any(change.user == "poison" for change in changes):
            raise ZeroDivisionError("poisoned")
        return real(self, transport, config, changes)

    monkeypatch.setattr(worker.connectors.braze.BrazeConnector, "deliver_many", poisoned)
    answers(harness, mocked, [(201, SUCCESS, {})], takes=0.01)  # a free pacing slot each
    users = ["a@example.com", "poison", "c@example.com"]

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    # The batch fails; of its three events, run alone, only the poison one fails again.
    assert [r.state for r in runs] == [
        states.FAILURE,
        states.SUCCESS,
        states.FAILURE,
        states.SUCCESS,
    ]
    assert [r.message.args[0] for r in runs[1:]] == [[event_of(u)] for u in users]
    assert all(r.message.retries == 0 for r in runs[1:])
    [entry] = harness.dead_letters()
    assert entry.user == "poison" and len(entry.attempts) == 1
    assert entry.reason.startswith("unexpected error: ZeroDivisionError: poisoned")
    delivered = [
        o["external_id"]
        for call in mocked.calls
        for o in json.loads(call.request.body)["attributes"]
    ]
    assert delivered == ["a@example.com", "c@example.com"]
    assert harness.rt.outbox.pending() == 0


def test_a_batch_cut_off_by_the_hard_time_limit_is_split_not_dead_lettered(
    harness: Harness,
) -> None:
    connector_id = braze_config(harness)
    carried = [{"at": START, "status": 503, "error": "Braze is unavailable (HTTP 503)"}]
    batch = [event_of("a@example.com"), event_of("b@example.com")]

    settle = cut_off_by_the_hard_limit(harness, (batch, connector_id), carried)

    assert settle == [("ack", False)]
    assert harness.dead_letters() == []
    split = harness.broker.published
    assert [m.args for m in split] == [([p], connector_id) for p in batch]
    assert all(m.kwargs == {"attempts": carried} and m.retries == 1 for m in split)
    # The batch ended; each of its events is in the outbox on its own.
    assert harness.rt.outbox.pending() == 2


def test_a_batch_that_overruns_the_soft_time_limit_is_split(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    calls = []

    def slow_once(self: Any, transport: Any, config: Any, changes: Any) -> Any:
        calls.append([change.user for change in changes])
        if len(calls) == 1:
            raise SoftTimeLimitExceeded()
        return [Delivered(201, {})] * len(changes)

    monkeypatch.setattr(worker.connectors.braze.BrazeConnector, "deliver_many", slow_once)
    users = ["a@example.com", "b@example.com"]

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.SUCCESS] * 3
    assert calls == [users, ["a@example.com"], ["b@example.com"]]
    assert harness.dead_letters() == []
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 2}
    assert harness.rt.outbox.pending() == 0
