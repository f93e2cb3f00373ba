"""The three signal body shapes: refusals become Signals with the right field, person and
time; opt-ins, bounces, other events and prefsync's own writes are ignored; anything else
is refused naming where; copies share an id, other signals do not."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.core.signals import InvalidSignal, Parsed, read_signals

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "signals"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
GROUP = "6f1c3a2e-1b0d-4c5e-9a8f-7e6d5c4b3a21"


def example(name: str) -> object:
    return json.loads((EXAMPLES / name).read_text())


def braze(body: object) -> Parsed:
    return read_signals("braze", "braze", body, NOW)


def brevo(body: object) -> Parsed:
    return read_signals("sendinblue", "brevo-main", body, NOW)


def test_braze_template_example() -> None:
    parsed = braze(example("braze-template.json"))
    [signal] = parsed.signals
    assert (signal.field, signal.kind, signal.user, signal.user_is_email) == (
        "email_subscribe",
        "unsubscribed",
        "jane.doe@example.com",
        False,
    )
    assert signal.at == datetime(2026, 12, 7, 10, 3, 12, tzinfo=UTC)
    assert parsed.ignored == 0


def test_braze_template_each_refused_field_is_a_signal_opt_ins_are_ignored() -> None:
    body = {
        "external_id": "u1",
        "email_subscribe": "opted_in",
        "push_subscribe": "UNSUBSCRIBED",
        "subscription_group_id": GROUP,
        "subscription_state": "unsubscribed",
        "id": "sig-1",
    }
    parsed = braze([body, {"external_id": "u2", "email_subscribe": "subscribed"}])
    assert [s.field for s in parsed.signals] == ["push_subscribe", GROUP]
    assert parsed.ignored == 2
    assert all(s.at == NOW for s in parsed.signals)  # no changed_at: when received


def test_braze_template_empty_liquid_values_are_absent() -> None:
    body = {"external_id": "u1", "email_subscribe": "unsubscribed", "push_subscribe": ""}
    assert len(braze(body).signals) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"email_subscribe": "unsubscribed"}, "body.external_id: field required"),
        ({"external_id": "u1"}, "body: needs email_subscribe"),
        ({"external_id": "u1", "email_subscribe": "gone"}, "body.email_subscribe: must be one"),
        ({"external_id": "u1", "subscription_group_id": GROUP}, "go together"),
        ({"external_id": 1.5, "email_subscribe": "unsubscribed"}, "must be a string"),
        (
            {"external_id": "u1", "email_subscribe": "unsubscribed", "changed_at": "yesterday"},
            "body.changed_at: must be an ISO-8601 time",
        ),
        ([], "non-empty array"),
        ("text", "must be a JSON object"),
        ([{"external_id": "u1", "email_subscribe": "unsubscribed"}, 3], r"body\[1\]: must be"),
    ],
)
def test_braze_template_refusals(body: object, problem: str) -> None:
    with pytest.raises(InvalidSignal, match=problem):
        braze(body)


def test_currents_example_and_what_it_ignores() -> None:
    [signal] = braze(example("braze-currents.json")).signals
    assert (signal.source, signal.field, signal.user) == (
        "braze_currents",
        "email_subscribe",
        "jane.doe@example.com",
    )
    assert signal.at == datetime.fromtimestamp(1796641392, UTC)

    def event(**properties: object) -> dict[str, object]:
        return {
            "event_type": "users.behaviors.subscription.GlobalStateChange",
            "id": "e1",
            "time": 1796600000,
            "user": {"external_user_id": "u1"},
            "properties": {"channel": "email", "subscription_status": "Unsubscribed", **properties},
        }

    group = {
        "event_type": "users.behaviors.subscriptiongroup.StateChange",
        "id": "e2",
        "time": 1796600000,
        "user": {"external_user_id": "u1"},
        "properties": {"subscription_group_id": GROUP, "subscription_status": "Unsubscribed"},
    }
    parsed = braze(
        {
            "events": [
                event(state_change_source="REST API"),  # prefsync's own write
                event(subscription_status="Opted In"),
                event(channel="sms"),
                {"event_type": "users.messages.email.Open", "id": "x"},
                {**event(), "user": {}},  # nobody prefsync named
                group,
            ]
        }
    )
    assert [s.field for s in parsed.signals] == [GROUP]
    assert parsed.ignored == 5


def test_currents_refusals() -> None:
    with pytest.raises(InvalidSignal, match="events: at most 100"):
        braze({"events": [{}] * 101})
    with pytest.raises(InvalidSignal, match=r"events\[0\].id: field required"):
        braze({"events": [{"event_type": "users.behaviors.subscription.GlobalStateChange"}]})


def test_brevo_example_single_and_batched() -> None:
    [signal] = brevo(example("brevo-unsubscribed.json")).signals
    assert (signal.field, signal.kind, signal.user, signal.user_is_email) == (
        "emailBlacklisted",
        "unsubscribed",
        "jane.doe@example.com",
        True,
    )
    batch = [
        {"event": "spam", "email": "a@example.com", "ts_event": 1796600000, "id": 9},
        {"event": "hard_bounce", "email": "b@example.com", "ts_event": 1796600000, "id": 9},
        {"event": "list_addition", "email": "c@example.com", "ts_event": 1796600000, "id": 9},
    ]
    parsed = brevo(batch)
    assert [(s.kind, s.user) for s in parsed.signals] == [("spam", "a@example.com")]
    assert parsed.ignored == 2
    with pytest.raises(InvalidSignal, match=r"body\[0\].email: field required"):
        brevo([{"event": "unsubscribed"}])


def test_a_future_time_is_the_time_received() -> None:
    body = {"external_id": "u1", "email_subscribe": "unsubscribed", "changed_at": "2999-01-01"}
    assert braze(body).signals[0].at == NOW


def test_copies_share_an_id_other_signals_do_not() -> None:
    one = {"event": "unsubscribed", "email": "a@example.com", "ts_event": 1796600000, "id": 7}
    copy = {**one}
    later = {**one, "ts_event": 1796600100}
    other_webhook_same_id = {**one, "email": "b@example.com"}
    ids = [brevo(body).signals[0].key("acme") for body in (one, copy, later, other_webhook_same_id)]
    assert ids[0] == ids[1] and len(set(ids)) == 3
    assert brevo(one).signals[0].key("other-tenant") != ids[0]
