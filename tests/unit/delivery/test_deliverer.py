"""Delivering a batch of events to one connector (worker.delivery.deliverer.Deliverer and
worker.delivery.pipeline.deliver): per-user coalescing with newest-wins, duplicates, busy users and
how a failing call ends the batch. Redis is fakeredis, HTTP is mocked by ``responses``."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import responses

from tests.unit.conftest import hold_elsewhere, install_runtime, known_values, lock_holder
from worker.connectors import connectors
from worker.connectors.base import Delivered, Transport, standalone_change
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import Deferred, InvalidEvent, PermanentError, RetryableError
from worker.core.events import parse_event
from worker.delivery import pipeline
from worker.delivery.deliverer import Unfinished
from worker.delivery.pacing import MARGIN
from worker.delivery.runtime import Runtime, connector_settings
from worker.infra.settings import Settings, get_settings
from worker.records.state import UserBusy, key

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "events" / "event-created.json"
TENANT = "acme"
BREVO = "https://api.brevo.com/v3"
BREVO_KEY = "xkeysib-TESTKEY-0123456789abcdef"
BRAZE_KEY = "braze-REST-KEY-0123456789abcdef"
TRACK = "https://rest.fra-01.braze.eu/users/track"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
NEWSLETTER = "consents_purposes_newsletter_enabled"
PRODUCT = "consents_purposes_product_updates_enabled"
FREQUENCY = "consents_purposes_newsletter_values_frequency_value"
BAD_REQUEST = {"code": "invalid_parameter", "message": "attributes should be an object"}
UNAVAILABLE = {"code": "internal_error", "message": "Service Unavailable"}


# -- set-up ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def brevo_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The connectors read the settings at every call.
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BREVO)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    # Brevo's 10 calls/s would space the calls of a test by 0.1 s: not what is tested here.
    runtime = install_runtime(monkeypatch, Settings(rate_limits={"sendinblue": 1000}))
    runtime.state.lock_wait = 0.05
    return runtime


@pytest.fixture
def brevo(rt: Runtime) -> ConnectorConfig:
    config = parse_config(
        {
            "id": "brevo",
            "type_id": "brevo",
            "authentication": {"private_api_key": BREVO_KEY},
            "mappings": [
                {"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER},
                {"id": "EMAIL_NOTIFICATION", "value": PRODUCT},
                {"id": "FREQUENCY", "value": FREQUENCY},
            ],
        }
    )
    rt.configs.put(TENANT, config)
    return config


@pytest.fixture
def braze(rt: Runtime) -> ConnectorConfig:
    config = parse_config(
        {
            "id": "braze",
            "type_id": "braze",
            "authentication": {"api_key": BRAZE_KEY, "server": "https://rest.fra-01.braze.eu"},
            "mappings": [
                {"id": "OPTED_IN", "value": NEWSLETTER},
                {"id": GROUP, "value": PRODUCT},
                {"id": "newsletter_frequency", "value": FREQUENCY},
            ],
        }
    )
    rt.configs.put(TENANT, config)
    return config


def event(
    event_id: str,
    minute: int,
    user: str = "u1",
    *,
    newsletter: bool | None = None,
    frequency: str | None = None,
    product: bool | None = None,
    tenant: str = TENANT,
) -> dict[str, Any]:
    """An event.created payload of ``user``, updated at 09:``minute``, setting the purposes
    given (``frequency`` goes with ``newsletter``)."""
    payload = json.loads(EXAMPLE.read_text())
    entity = payload["parameters"]["entity"]
    entity["id"] = event_id
    entity["organization_id"] = tenant
    entity["user"]["organization_user_id"] = user
    entity["created_at"] = entity["updated_at"] = f"2026-11-20T09:{minute:02d}:00.000Z"
    purposes: list[dict[str, Any]] = []
    if newsletter is not None:
        purpose: dict[str, Any] = {"id": "newsletter", "enabled": newsletter}
        if frequency is not None:
            purpose["values"] = {"frequency": {"value": frequency}}
        purposes.append(purpose)
    if product is not None:
        purposes.append({"id": "product_updates", "enabled": product})
    entity["consents"]["purposes"] = purposes
    return payload


def key_of(payload: dict[str, Any]) -> str:
    return parse_event(payload).event_key


def deliver(rt: Runtime, config: ConnectorConfig, *payloads: dict[str, Any]) -> Unfinished:
    return rt.deliverer.deliver(TENANT, [parse_event(p) for p in payloads], config)


def update_url(user: str) -> str:
    return f"{BREVO}/contacts/{user}?identifierType=ext_id"


def audited(rt: Runtime) -> dict[str, tuple[str, str]]:
    """event key -> (outcome, reason), for every audit entry of the tenant (each key once)."""
    entries = rt.audit.query(TENANT, limit=1000)
    outcomes = {entry.event_key: (entry.outcome, entry.reason) for entry in entries}
    assert len(outcomes) == len(entries), "an event was audited twice"
    return outcomes


def done(rt: Runtime, connector_id: str, *payloads: dict[str, Any]) -> list[bool]:
    events = [parse_event(p) for p in payloads]
    return [rt.state.is_done(TENANT, connector_id, e.user, e.event_key) for e in events]


def bodies(mocked: responses.RequestsMock) -> list[Any]:
    return [json.loads(call.request.body) for call in mocked.calls]


# -- coalescing, newest wins inside a batch --------------------------------------------------


def test_three_events_of_one_user_become_one_call_with_the_newest_value_of_each_property(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    first = event("a", 1, newsletter=True, frequency="weekly", product=True)
    last = event("b", 3, newsletter=False)
    middle = event("c", 2, product=False)

    # Not in time order: the batch order must not matter.
    assert deliver(rt, brevo, last, first, middle) == {}

    # Newsletter from the last, product from the middle one, frequency only the first sets.
    assert bodies(mocked) == [
        {
            "attributes": {"EMAIL_NOTIFICATION": False, "FREQUENCY": "weekly"},
            "emailBlacklisted": True,
        }
    ]
    assert audited(rt) == {key_of(p): ("delivered", "") for p in (first, last, middle)}
    assert all(entry.status == 204 for entry in rt.audit.query(TENANT))
    assert done(rt, "brevo", first, last, middle) == [True, True, True]
    assert known_values(rt.state, TENANT, "u1") == {
        NEWSLETTER: False,
        FREQUENCY: "weekly",
        PRODUCT: False,
    }
    # The lock of the user is released.
    assert lock_holder(rt.state, TENANT, "brevo", "u1") is None


def test_an_event_whose_every_property_is_superseded_in_the_batch_is_skipped_stale(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    older = event("a", 1, newsletter=True, product=True)
    newer = event("b", 2, newsletter=False, product=False)

    assert deliver(rt, brevo, older, newer) == {}

    assert bodies(mocked) == [
        {"attributes": {"EMAIL_NOTIFICATION": False}, "emailBlacklisted": True}
    ]
    assert audited(rt) == {key_of(older): ("skipped", "stale"), key_of(newer): ("delivered", "")}
    # A stale event has ended too: a redelivery of it sends nothing (stale again: nothing
    # of it was told, so no record names it done).
    assert done(rt, "brevo", older, newer) == [False, True]
    assert deliver(rt, brevo, older) == {}
    assert len(mocked.calls) == 1
    assert [(e.outcome, e.reason) for e in rt.audit.query(TENANT, limit=1)] == [
        ("skipped", "stale")
    ]


def test_braze_gets_one_object_per_user_with_that_users_newest_values(
    rt: Runtime, braze: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    # However many users the connector packs into one call: each gets exactly one object.
    mocked.post(TRACK, status=201, json={"message": "success"})
    payloads = [
        event("j1", 1, "jane", newsletter=True, frequency="weekly", product=True),
        event("k1", 1, "kim", newsletter=False),
        event("j2", 3, "jane", newsletter=False),
        event("j3", 2, "jane", product=False),
    ]

    assert deliver(rt, braze, *payloads) == {}

    # One call: Braze takes up to braze_batch_size users per call.
    assert len(mocked.calls) == 1
    objects = [obj for body in bodies(mocked) for obj in body["attributes"]]
    by_user = {obj["external_id"]: obj for obj in objects}
    assert len(objects) == len(by_user) == 2
    assert by_user["jane"] == {
        "external_id": "jane",
        "_update_existing_only": True,
        "email_subscribe": "unsubscribed",
        "subscription_groups": [
            {"subscription_group_id": GROUP, "subscription_state": "unsubscribed"}
        ],
        "newsletter_frequency": "weekly",
    }
    assert by_user["kim"] == {
        "external_id": "kim",
        "_update_existing_only": True,
        "email_subscribe": "unsubscribed",
    }
    assert audited(rt) == {key_of(p): ("delivered", "") for p in payloads}
    assert done(rt, "braze", *payloads) == [True] * 4


def test_braze_packs_the_users_into_one_call_and_a_refused_object_fails_only_its_user(
    rt: Runtime, braze: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    refusal = {"type": "Invalid attribute", "input_array": "attributes", "index": 1}
    mocked.post(TRACK, status=201, json={"message": "success", "errors": [refusal]})
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2, 3)]

    unfinished = deliver(rt, braze, *payloads)

    assert [[obj["external_id"] for obj in body["attributes"]] for body in bodies(mocked)] == [
        ["u1", "u2", "u3"]
    ]
    assert list(unfinished) == [1]
    assert isinstance(unfinished[1], PermanentError)
    assert audited(rt) == {
        key_of(payloads[0]): ("delivered", ""),
        key_of(payloads[2]): ("delivered", ""),
    }
    assert done(rt, "braze", *payloads) == [True, False, True]


def test_braze_a_failed_call_leaves_its_users_and_every_later_call_unsent(
    rt: Runtime,
    braze: ConnectorConfig,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFSYNC_BRAZE_BATCH_SIZE", "2")
    get_settings.cache_clear()
    # A connector is built with the settings: the config's, once read again, has the new one.
    bound = connectors(connector_settings(get_settings()))
    braze = parse_config(braze.to_stored(), connectors=bound)
    mocked.post(TRACK, status=503, json={"message": "Service Unavailable"})
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2, 3)]

    unfinished = deliver(rt, braze, *payloads)

    assert sorted(unfinished) == [0, 1, 2]
    assert all(isinstance(why, RetryableError) for why in unfinished.values())
    # Only the first call (two users) went out; the third user's call was never made.
    assert [[obj["external_id"] for obj in body["attributes"]] for body in bodies(mocked)] == [
        ["u1", "u2"]
    ]
    assert audited(rt) == {}
    assert done(rt, "braze", *payloads) == [False, False, False]


# -- duplicates -----------------------------------------------------------------------------


def test_the_same_event_twice_in_a_batch_is_sent_once_and_the_copy_skipped(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    payload = event("a", 1, newsletter=False)

    assert deliver(rt, brevo, payload, copy.deepcopy(payload)) == {}

    assert bodies(mocked) == [{"emailBlacklisted": True}]
    entries = rt.audit.query(TENANT)
    assert sorted((e.event_key, e.outcome, e.reason) for e in entries) == [
        (key_of(payload), "delivered", ""),
        (key_of(payload), "skipped", "duplicate"),
    ]
    assert done(rt, "brevo", payload) == [True]


def test_an_event_is_marked_done_only_together_with_its_audit_entry(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock, monkeypatch
) -> None:
    mocked.put(update_url("u1"), status=204)
    payload = event("a", 1, newsletter=False)

    def audit_fails(**_: Any) -> None:
        raise RuntimeError("the audit write failed")

    monkeypatch.setattr(rt.audit, "append", audit_fails)
    with pytest.raises(RuntimeError):
        deliver(rt, brevo, payload)

    # Not done: a retry delivers and audits it, rather than skip it as a duplicate.
    assert done(rt, "brevo", payload) == [False]
    # Nor left locked until the lock expires: the retry finds the user free.
    assert lock_holder(rt.state, TENANT, "brevo", "u1") is None


@pytest.mark.parametrize(
    ("done_for", "calls", "outcome"),
    [
        pytest.param("brevo", 0, ("skipped", "duplicate"), id="done-here-is-a-duplicate"),
        pytest.param("braze", 1, ("delivered", ""), id="done-elsewhere-is-still-sent"),
    ],
)
def test_an_event_done_for_this_connector_is_a_duplicate_and_for_another_is_sent(
    rt: Runtime,
    brevo: ConnectorConfig,
    mocked: responses.RequestsMock,
    done_for: str,
    calls: int,
    outcome: tuple[str, str],
) -> None:
    if calls:  # else any call fails the test: the URL is not mocked
        mocked.put(update_url("u1"), status=204)
    payload = event("a", 1, newsletter=False)
    # A marker of the older shape, left by a release that also counted outcomes here.
    rt.redis.hset("prefsync:stats", "delivered", 1)
    rt.redis.set(key("done", TENANT, done_for, key_of(payload)), 1)

    assert deliver(rt, brevo, payload) == {}

    assert len(mocked.calls) == calls
    assert audited(rt) == {key_of(payload): outcome}


# -- busy users -----------------------------------------------------------------------------


def test_a_user_locked_elsewhere_comes_back_busy_and_the_others_are_delivered(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u2"), status=204)
    hold_elsewhere(rt.state, TENANT, "brevo", "u1")
    another_worker = lock_holder(rt.state, TENANT, "brevo", "u1")
    busy = event("a", 1, "u1", newsletter=False)
    free = event("b", 1, "u2", newsletter=False)

    unfinished = deliver(rt, brevo, busy, free)

    assert list(unfinished) == [0]
    assert isinstance(unfinished[0], UserBusy)
    assert isinstance(unfinished[0], Deferred)  # not a failure: it uses no retry
    assert unfinished[0].wait > 0
    assert [call.request.url for call in mocked.calls] == [update_url("u2")]
    assert audited(rt) == {key_of(free): ("delivered", "")}
    assert done(rt, "brevo", busy, free) == [False, True]
    # The other worker's lock is untouched; this delivery's own lock is released.
    assert lock_holder(rt.state, TENANT, "brevo", "u1") == another_worker
    assert lock_holder(rt.state, TENANT, "brevo", "u2") is None


def test_a_busy_user_is_delivered_once_its_lock_is_free(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    release = hold_elsewhere(rt.state, TENANT, "brevo", "u1")
    payload = event("a", 1, "u1", newsletter=False)
    assert isinstance(deliver(rt, brevo, payload)[0], UserBusy)

    release()
    assert deliver(rt, brevo, payload) == {}
    assert bodies(mocked) == [{"emailBlacklisted": True}]
    assert audited(rt) == {key_of(payload): ("delivered", "")}


# -- one call per user (Brevo): how a failing call ends the batch -----------------------------


def test_a_transient_failure_stops_the_batch_and_the_rest_share_its_error(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    mocked.put(update_url("u2"), status=503, json=UNAVAILABLE)
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2, 3)]

    unfinished = deliver(rt, brevo, *payloads)

    assert sorted(unfinished) == [1, 2]
    assert isinstance(unfinished[1], RetryableError)
    assert unfinished[1].status == 503
    assert unfinished[2] is unfinished[1]
    # The third user was never sent.
    assert [call.request.url for call in mocked.calls] == [update_url("u1"), update_url("u2")]
    assert audited(rt) == {key_of(payloads[0]): ("delivered", "")}
    assert done(rt, "brevo", *payloads) == [True, False, False]
    for user in ("u1", "u2", "u3"):
        assert lock_holder(rt.state, TENANT, "brevo", user) is None

    # The retry of what did not end delivers it; the first user is not sent again.
    mocked.replace(responses.PUT, update_url("u2"), status=204)
    mocked.put(update_url("u3"), status=204)
    assert deliver(rt, brevo, payloads[1], payloads[2]) == {}
    assert [call.request.url for call in mocked.calls[2:]] == [update_url("u2"), update_url("u3")]
    assert done(rt, "brevo", *payloads) == [True, True, True]


def test_a_deferral_by_pacing_stops_the_batch_unsent(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    # One call per second and no sleeping: the second call has to wait, so it is deferred.
    rt.deliverer.rates = {"sendinblue": 1.0}
    rt.deliverer.max_sleep = 0.0
    mocked.put(update_url("u1"), status=204)
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2, 3)]

    unfinished = deliver(rt, brevo, *payloads)

    assert sorted(unfinished) == [1, 2]
    assert isinstance(unfinished[1], Deferred)
    assert 0 < unfinished[1].wait <= 1.0 + MARGIN  # one slot at 1 call/s
    assert unfinished[2] is unfinished[1]
    assert len(mocked.calls) == 1
    assert done(rt, "brevo", *payloads) == [True, False, False]


def test_a_refusal_fails_only_its_own_user(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    mocked.put(update_url("u2"), status=400, json=BAD_REQUEST)
    mocked.put(update_url("u3"), status=204)
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2, 3)]

    unfinished = deliver(rt, brevo, *payloads)

    assert list(unfinished) == [1]
    assert isinstance(unfinished[1], PermanentError)
    assert unfinished[1].status == 400
    assert len(mocked.calls) == 3
    assert audited(rt) == {
        key_of(payloads[0]): ("delivered", ""),
        key_of(payloads[2]): ("delivered", ""),
    }
    # Left for the dead-letter step to record.
    assert done(rt, "brevo", *payloads) == [True, False, True]


def test_a_failed_change_leaves_every_event_it_carries_unfinished(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=503, json=UNAVAILABLE)
    first = event("a", 1, newsletter=True, product=True)
    second = event("b", 2, newsletter=False)

    unfinished = deliver(rt, brevo, first, second)

    assert sorted(unfinished) == [0, 1]
    assert all(isinstance(why, RetryableError) for why in unfinished.values())
    assert audited(rt) == {}
    assert done(rt, "brevo", first, second) == [False, False]


# -- newest wins across batches -------------------------------------------------------------


def test_an_older_value_arriving_in_a_later_batch_is_not_sent(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    newer = event("b", 2, newsletter=False)
    older = event("a", 1, newsletter=True)
    older_with_more = event("c", 1, newsletter=True, product=True)

    assert deliver(rt, brevo, newer) == {}
    assert deliver(rt, brevo, older) == {}
    assert deliver(rt, brevo, older_with_more) == {}

    # The older opt-in never reaches Brevo; only the property it alone sets does.
    assert bodies(mocked) == [
        {"emailBlacklisted": True},
        {"attributes": {"EMAIL_NOTIFICATION": True}},
    ]
    assert audited(rt) == {
        key_of(newer): ("delivered", ""),
        key_of(older): ("skipped", "stale"),
        key_of(older_with_more): ("delivered", ""),
    }
    # Nothing of the stale one was told, so nothing names it done; sent again, it is stale.
    assert done(rt, "brevo", older) == [False]
    assert known_values(rt.state, TENANT, "u1") == {NEWSLETTER: False, PRODUCT: True}
    assert deliver(rt, brevo, older) == {}
    assert len(mocked.calls) == 2


# -- pipeline.deliver -----------------------------------------------------------------------


def test_a_payload_that_is_no_event_comes_back_at_its_index_and_the_others_are_delivered(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    mocked.put(update_url("u2"), status=204)
    first = event("a", 1, "u1", newsletter=False)
    second = event("b", 1, "u2", newsletter=True)

    unfinished = pipeline.deliver(rt, [first, "not an event", second, {"type": "nope"}], "brevo")

    assert sorted(unfinished) == [1, 3]
    assert all(isinstance(why, InvalidEvent) for why in unfinished.values())
    assert sorted(call.request.url for call in mocked.calls) == [update_url("u1"), update_url("u2")]
    assert audited(rt) == {key_of(first): ("delivered", ""), key_of(second): ("delivered", "")}


def test_what_the_deliverer_leaves_unfinished_comes_back_at_the_payloads_index(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    # The deliverer numbers the valid events only; the answer must be by payload index.
    mocked.put(update_url("u1"), status=400, json=BAD_REQUEST)
    mocked.put(update_url("u2"), status=204)
    refused = event("a", 1, "u1", newsletter=False)
    fine = event("b", 1, "u2", newsletter=False)

    unfinished = pipeline.deliver(rt, [None, refused, 42, fine], "brevo")

    assert sorted(unfinished) == [0, 1, 2]
    assert isinstance(unfinished[0], InvalidEvent)
    assert isinstance(unfinished[1], PermanentError) and unfinished[1].status == 400
    assert isinstance(unfinished[2], InvalidEvent)
    assert audited(rt) == {key_of(fine): ("delivered", "")}


def test_a_connector_not_configured_refuses_every_event(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    payloads = [event("a", 1, "u1", newsletter=False), event("b", 1, "u2", newsletter=False)]

    unfinished = pipeline.deliver(rt, payloads, "no-such-connector")

    assert sorted(unfinished) == [0, 1]
    assert all(isinstance(why, PermanentError) for why in unfinished.values())
    assert "no-such-connector" in str(unfinished[0])
    assert len(mocked.calls) == 0
    assert audited(rt) == {}


def test_a_batch_mixing_tenants_answers_each_event_at_its_own_index(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    # globex has no "brevo" connector: only its events are refused.
    mocked.put(update_url("u1"), status=204)
    mocked.put(update_url("u3"), status=204)
    payloads = [
        event("a", 1, "u1", newsletter=False),
        event("b", 1, "u2", newsletter=False, tenant="globex"),
        event("c", 1, "u3", newsletter=False),
        event("d", 1, "u4", newsletter=False, tenant="globex"),
    ]

    unfinished = pipeline.deliver(rt, payloads, "brevo")

    assert sorted(unfinished) == [1, 3]
    assert all(isinstance(why, PermanentError) for why in unfinished.values())
    assert [call.request.url for call in mocked.calls] == [update_url("u1"), update_url("u3")]
    assert done(rt, "brevo", payloads[0], payloads[2]) == [True, True]


def test_a_message_that_is_not_a_list_is_refused(rt: Runtime, brevo: ConnectorConfig) -> None:
    with pytest.raises(InvalidEvent):
        pipeline.deliver(rt, event("a", 1, newsletter=False), "brevo")


# -- the default deliver_many (a connector without a batch API) -------------------------------


def test_the_default_deliver_many_stops_at_a_transient_failure_but_not_at_a_refusal(
    brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=400, json=BAD_REQUEST)
    mocked.put(update_url("u2"), status=204)
    mocked.put(update_url("u3"), status=503, json=UNAVAILABLE)
    changes = [standalone_change(brevo, f"u{n}", {NEWSLETTER: False}) for n in (1, 2, 3, 4)]

    answers = brevo.connector.deliver_many(Transport(timeout=5), brevo, changes)

    assert isinstance(answers[0], PermanentError)
    assert answers[1] == Delivered(204, {"emailBlacklisted": True})
    assert isinstance(answers[2], RetryableError)
    assert answers[3] is answers[2]
    assert len(mocked.calls) == 3  # the fourth user was not sent
