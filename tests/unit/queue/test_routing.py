"""The route task (worker.delivery.pipeline.route, worker.queue.tasks.route): a valid event
fanned out to a delivery per connector, an invalid one dead-lettered, not retried."""

from __future__ import annotations

import responses
from celery import states

from tests.unit.queue.harness import (
    SUCCESS,
    TENANT,
    Harness,
    answers,
    braze_config,
    brevo_config,
    event,
    event_of,
    sent_body,
)
from worker.queue import publishing
from worker.queue.tasks import route

# -- invalid events ----------------------------------------------------------------------------


def test_an_invalid_payload_given_to_route_is_dead_lettered_not_retried(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    braze_config(harness)
    payload = event()
    del payload["parameters"]["entity"]["organization_id"]

    harness.worker.send(route, [payload])
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.SUCCESS]
    assert harness.broker.published == [runs[0].message]  # no retry, no delivery
    assert len(mocked.calls) == 0
    [entry] = harness.dead_letters()
    assert entry.reason.startswith("invalid event")
    assert "parameters.entity.organization_id: field required" in entry.reason
    assert entry.connector_id == ""
    assert entry.payload == payload
    assert len(entry.attempts) == 1


def test_route_fans_a_valid_event_out_to_a_delivery_per_connector(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(201, SUCCESS, {})])

    harness.worker.send(route, [event()])
    runs = harness.worker.drain()

    assert [(r.message.task, r.state) for r in runs] == [
        ("prefsync.route", states.SUCCESS),
        ("prefsync.deliver", states.SUCCESS),
    ]
    assert runs[1].message.args == ([event()], connector_id)
    assert len(mocked.calls) == 1
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.rt.outbox.pending() == 0


# -- batches: what one event of a batch does to the others ------------------------------------


def test_a_route_batch_dead_letters_its_invalid_event_and_routes_the_others(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    invalid = event_of("b@example.com")
    del invalid["parameters"]["entity"]["organization_id"]
    valid = [event_of("a@example.com"), event_of("c@example.com")]
    answers(harness, mocked, [(201, SUCCESS, {})])

    harness.worker.send(route, [valid[0], invalid, valid[1]])
    runs = harness.worker.drain()

    assert [(r.message.task, r.state) for r in runs] == [
        ("prefsync.route", states.SUCCESS),
        ("prefsync.deliver", states.SUCCESS),
    ]
    assert runs[1].message.args == (valid, connector_id)
    [entry] = harness.dead_letters()
    assert entry.payload == invalid and entry.reason.startswith("invalid event")
    assert [o["external_id"] for o in sent_body(mocked)["attributes"]] == [
        "a@example.com",
        "c@example.com",
    ]
    assert harness.rt.outbox.pending() == 0


def test_route_told_named_connectors_fans_out_to_those_only(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    brevo_config(harness)
    answers(harness, mocked, [(201, SUCCESS, {})])

    publishing.publish(route, [[event()]], {"connectors": [connector_id]})
    runs = harness.worker.drain()

    assert [(r.message.task, r.message.args[1:]) for r in runs[1:]] == [
        ("prefsync.deliver", (connector_id,))
    ]
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.rt.recorder.counts(TENANT, "brevo") == {}
