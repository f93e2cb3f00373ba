"""Reconcile (worker.delivery.reconcile): what the tool should hold, from prefsync's state
through the connector's own mappings, against what it answers; Braze's and Brevo's reads
(HTTP mocked by ``responses``), paced and retried."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import responses

from worker.connectors.base import Transport
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.events import canonical_name, parse_event
from worker.delivery.pacing import Pacer
from worker.delivery.reconcile import (
    MISSED_SIGNAL,
    Drift,
    Reconciler,
    compare,
    correction,
    expected,
    fix_for,
    missed_signal,
)
from worker.records.person import Known

SERVER = "https://rest.fra-01.braze.eu"
BREVO = "https://api.brevo.com/v3"
NEWSLETTER = "consents_purposes_newsletter_enabled"
OPTOUT = "consents_purposes_email_optout_enabled"
PRODUCT = "consents_purposes_product_updates_enabled"
COLOUR = "consents_purposes_newsletter_values_colour_value"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"


def braze(**extra: Any) -> ConnectorConfig:
    return parse_config(
        {
            "id": "braze",
            "type_id": "braze",
            "authentication": {"api_key": "braze-key-0123", "server": SERVER},
            "mappings": [
                {"id": "OPTED_IN", "value": NEWSLETTER},
                {"id": "UNSUBSCRIBED", "value": OPTOUT},
                {"id": GROUP, "value": PRODUCT},
                {"id": "colour", "value": COLOUR},
            ],
            **extra,
        }
    )


def brevo(**extra: Any) -> ConnectorConfig:
    return parse_config(
        {
            "id": "brevo",
            "type_id": "sendinblue",
            "authentication": {"api_key": "xkeysib-0123456789"},
            "mappings": [
                {"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER},
                {"id": "colour", "value": COLOUR},
            ],
            **extra,
        }
    )


def state(**values: Any) -> dict[str, Any]:
    names = {"newsletter": NEWSLETTER, "optout": OPTOUT, "product": PRODUCT, "colour": COLOUR}
    return {canonical_name(names[name]): value for name, value in values.items()}


def test_expected_fields_are_the_tools_own_names_with_fed_fields_derived() -> None:
    current = state(newsletter=True, optout=True, product=True, colour="blue")
    # A refusal wins email_subscribe (derived from both properties); the group by its id.
    assert expected(braze(), current) == {
        "email_subscribe": "unsubscribed",
        GROUP: "subscribed",
        "colour": "blue",
    }
    assert expected(brevo(), state(newsletter=False, colour="red")) == {
        "emailBlacklisted": True,
        "COLOUR": "red",
    }


def test_a_field_the_tool_holds_otherwise_drifts() -> None:
    wanted = expected(brevo(), state(newsletter=True, colour="red"))
    held = {"emailBlacklisted": False, "COLOUR": "green", "OTHER": 1}
    assert compare(brevo(), "ann", wanted, held) == [Drift("ann", "COLOUR", "red", "green")]
    assert compare(brevo(), "ann", wanted, held | {"COLOUR": "red"}) == []


def test_braze_subscribed_is_no_decision() -> None:
    # UNSUBSCRIBED false gives "subscribed": whatever the person decided in Braze stands.
    wanted = expected(braze(), state(optout=False))
    assert wanted == {"email_subscribe": "subscribed"}
    for found in ("opted_in", "subscribed", "unsubscribed"):
        assert compare(braze(), "ann", wanted, {"email_subscribe": found}) == []
    # Found "subscribed" against a decided value is drift.
    decided = expected(braze(), state(newsletter=True))
    assert compare(braze(), "ann", decided, {"email_subscribe": "subscribed"}) == [
        Drift("ann", "email_subscribe", "opted_in", "subscribed")
    ]


def test_a_global_unsubscribe_outranks_groups() -> None:
    wanted = expected(braze(), state(newsletter=False, product=True))
    assert wanted == {"email_subscribe": "unsubscribed", GROUP: "subscribed"}
    # The tool's group says subscribed but the global unsubscribe outranks it: no drift.
    held = {"email_subscribe": "unsubscribed", GROUP: "subscribed"}
    assert compare(braze(), "ann", wanted, held) == []
    # A global unsubscribe in the tool unsubscribes the group prefsync wants subscribed.
    wanted = expected(braze(), state(newsletter=True, product=True))
    drifts = compare(
        braze(), "ann", wanted, {"email_subscribe": "unsubscribed", GROUP: "subscribed"}
    )
    assert [(d.field, d.expected, d.found) for d in drifts] == [
        (GROUP, "subscribed", "unsubscribed"),
        ("email_subscribe", "opted_in", "unsubscribed"),
    ]


def test_a_refusal_in_a_bidirectional_tool_is_a_missed_signal() -> None:
    wanted = expected(brevo(), state(newsletter=True))
    held = {"emailBlacklisted": True}
    assert compare(brevo(), "ann", wanted, held)[0].kind == "drift"
    listening = brevo(bidirectional=True)
    assert compare(listening, "ann", wanted, held) == [
        Drift("ann", "emailBlacklisted", False, True, MISSED_SIGNAL)
    ]
    # Even against Braze's no decision: the person refused in the tool.
    wanted = expected(braze(bidirectional=True), state(optout=False))
    found = compare(braze(bidirectional=True), "ann", wanted, {"email_subscribe": "unsubscribed"})
    assert found == [Drift("ann", "email_subscribe", "subscribed", "unsubscribed", MISSED_SIGNAL)]


def test_a_person_the_tool_does_not_know_drifts_only_in_upsert_mode() -> None:
    wanted = expected(brevo(), state(newsletter=True))
    assert compare(brevo(), "ann", wanted, None) == []
    upsert = brevo(upsert_mode=True)
    assert compare(upsert, "ann", wanted, None) == [Drift("ann", "emailBlacklisted", False, None)]


@pytest.fixture
def pacer() -> Pacer:
    return Pacer(fakeredis.FakeRedis(), max_hold=1.0)


@responses.activate
def test_braze_read_exports_profiles_then_group_states(pacer: Pacer) -> None:
    responses.post(
        f"{SERVER}/users/export/ids",
        json={
            "users": [
                {
                    "external_id": "ann",
                    "email_subscribe": "opted_in",
                    "push_subscribe": "subscribed",
                    "custom_attributes": {"colour": "blue"},
                }
            ],
            "invalid_user_ids": ["bob"],
        },
    )
    responses.get(
        f"{SERVER}/subscription/status/get",
        json={"status": {"ann": "Unsubscribed"}},
    )
    config = braze()
    held = config.connector.read(Transport(5), config, ["ann", "bob"])
    assert held == {
        "ann": {
            "email_subscribe": "opted_in",
            "push_subscribe": "subscribed",
            "colour": "blue",
            GROUP: "unsubscribed",
        },
        "bob": None,
    }
    export, status = responses.calls
    assert export.request.body and b'"fields_to_export"' in export.request.body
    assert f"subscription_group_id={GROUP}" in status.request.url
    assert "external_id%5B%5D=ann" in status.request.url


@responses.activate
def test_reconciler_reads_brevo_and_retries_a_429(pacer: Pacer) -> None:
    responses.get(
        f"{BREVO}/contacts/ann%40example.com",
        status=429,
        json={"code": "too_many_requests", "message": "slow down"},
    )
    responses.get(
        f"{BREVO}/contacts/ann%40example.com",
        json={"emailBlacklisted": True, "smsBlacklisted": False, "attributes": {"COLOUR": "red"}},
    )
    responses.get(
        f"{BREVO}/contacts/bob%40example.com",
        status=404,
        json={"code": "document_not_found", "message": "Contact does not exist"},
    )
    slept: list[float] = []
    reconciler = Reconciler(
        Transport(5), pacer, countdowns=(0.01, 0.01), jitter=0, sleep=slept.append
    )
    people = {"ann@example.com": state(newsletter=True, colour="red"), "bob@example.com": {}}
    result = reconciler.run(brevo(), list(people), people.__getitem__)
    assert result.checked == 2
    assert result.drifted == [Drift("ann@example.com", "emailBlacklisted", False, True)]
    assert result.unreadable == {}
    assert len(slept) == 1
    # bob: prefsync expects nothing of him, so the tool is not even asked.
    assert [call.request.url.split("?")[0] for call in responses.calls] == [
        f"{BREVO}/contacts/ann%40example.com"
    ] * 2


@responses.activate
def test_reconciler_names_people_whose_tool_cannot_be_read(pacer: Pacer) -> None:
    responses.post(f"{SERVER}/users/export/ids", status=401, json={"message": "Invalid key"})
    reconciler = Reconciler(Transport(5), pacer, countdowns=(0.01,), jitter=0, sleep=lambda _: None)
    result = reconciler.run(braze(), ["ann"], lambda _: state(newsletter=True))
    assert result.drifted == []
    assert "users.export.ids" in result.unreadable["ann"]
    assert "braze-key-0123" not in result.unreadable["ann"]


def test_a_correction_is_the_event_again_with_its_key_ordering_and_values() -> None:
    values = {canonical_name(NEWSLETTER): True, canonical_name(COLOUR): "blue"}
    key = "event.created:ev:1:2026-11-20T09:15:00.000Z"
    payload = correction("acme", "ann", key, values, None)
    assert payload is not None
    event = parse_event(payload)
    assert (event.event_key, event.user, event.tenant) == (key, "ann", "acme")
    assert dict(event.properties.items()).items() >= values.items()
    # A user's update reads back as changing every property it carries, its version kept.
    key = "user.updated:u-1:2026-11-20T09:15:00Z"
    event = parse_event(correction("acme", "ann", key, values, 7))
    assert (event.event_key, event.ordering.version) == (key, 7)
    assert event.resolve(NEWSLETTER) == (canonical_name(NEWSLETTER), True)
    # A key or a property it cannot write is no correction.
    assert correction("acme", "ann", "nonsense", values, None) is None
    assert correction("acme", "ann", key, {"something_else": True}, None) is None


def test_fix_for_resends_the_events_behind_the_drifted_fields_only() -> None:
    known = {
        canonical_name(NEWSLETTER): Known(True, 1, None, "event.created:a:2026-11-20T09:15:00Z"),
        canonical_name(PRODUCT): Known(True, 2, None, "event.created:b:2026-11-21T09:15:00Z"),
        canonical_name(COLOUR): Known("blue", 1, None, "event.created:a:2026-11-20T09:15:00Z"),
    }
    drifts = [Drift("ann", "email_subscribe", "opted_in", "subscribed")]
    fix = fix_for(braze(), "acme", "ann", drifts, known)
    assert fix is not None
    assert (fix.properties, fix.fields) == ([canonical_name(NEWSLETTER)], ["email_subscribe"])
    (payload,) = fix.payloads
    assert parse_event(payload).event_key == "event.created:a:2026-11-20T09:15:00Z"
    drifts = [Drift("ann", "colour", "blue", "red"), Drift("ann", GROUP, "subscribed", None)]
    fix = fix_for(braze(), "acme", "ann", drifts, known)
    assert fix is not None and fix.fields == [GROUP]
    assert fix.properties == sorted([canonical_name(PRODUCT), canonical_name(COLOUR)])
    assert len(fix.payloads) == 2


def test_a_missed_signal_is_the_signal_the_tool_did_not_send_once_each() -> None:
    drift = Drift("ann@example.com", "emailBlacklisted", False, True, MISSED_SIGNAL)
    first = missed_signal(brevo(bidirectional=True), drift, datetime(2026, 12, 7, tzinfo=UTC))
    later = missed_signal(brevo(bidirectional=True), drift, datetime(2026, 12, 8, tzinfo=UTC))
    assert (first.connector_id, first.source, first.user, first.field, first.kind) == (
        "brevo",
        "brevo",
        "ann@example.com",
        "emailBlacklisted",
        "unsubscribed",
    )
    assert not first.user_is_email  # the person's id, known: nothing to resolve
    assert first.key("acme") == later.key("acme")  # found again: the same signal
