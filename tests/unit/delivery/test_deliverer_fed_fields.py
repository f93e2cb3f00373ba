"""Fields several mappings feed (Braze email_subscribe from OPTED_IN and UNSUBSCRIBED,
push_subscribe, subscription groups; Brevo emailBlacklisted, smsBlacklisted) are computed
from the person's whole current state and sent only when they change (docs/mappings.md, "fed
fields"). worker.delivery.deliverer on fakeredis, HTTP mocked by ``responses``."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import responses
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.conftest import known_values
from worker.connectors.base import standalone_change
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.events import parse_event
from worker.delivery.runtime import Runtime
from worker.infra.settings import Settings, get_settings

TENANT = "acme"
TRACK = "https://rest.fra-01.braze.eu/users/track"
BREVO = "https://api.brevo.com/v3"
NEWSLETTER = "consents_purposes_newsletter_enabled"
OPTOUT = "consents_purposes_email_optout_enabled"
PUSH = "consents_channels_push_enabled"
SMS = "consents_channels_sms_enabled"
PRODUCT = "consents_purposes_product_updates_enabled"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
# Strongest first: any refusal wins (docs/mappings.md#braze).
EMAIL_STATES = ("unsubscribed", "opted_in", "subscribed")


def braze_config() -> ConnectorConfig:
    return parse_config(
        {
            "id": "braze",
            "type_id": "braze",
            "authentication": {
                "api_key": "braze-key-0123",
                "server": "https://rest.fra-01.braze.eu",
            },
            "mappings": [
                {"id": "OPTED_IN", "value": NEWSLETTER},
                {"id": "UNSUBSCRIBED", "value": OPTOUT},
                {"id": "PUSH_OPTED_IN", "value": PUSH},
                {"id": GROUP, "value": PRODUCT},
            ],
        }
    )


def brevo_config() -> ConnectorConfig:
    return parse_config(
        {
            "id": "brevo",
            "type_id": "brevo",
            "authentication": {"private_api_key": "xkeysib-0123"},
            "mappings": [
                {"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER},
                {"id": "SMS_CAMPAIGNS_SUBSCRIBED", "value": SMS},
            ],
        }
    )


def new_runtime() -> Runtime:
    rt = Runtime(Settings(rate_limits={"sendinblue": 1000}))
    rt.__dict__["redis"] = fakeredis.FakeRedis()
    rt.state.lock_wait = 0.05
    return rt


@pytest.fixture(autouse=True)
def brevo_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BREVO)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def consent(
    event_id: str,
    minute: int,
    user: str = "u1",
    *,
    channels: dict[str, bool] | None = None,
    **purposes: bool,
) -> dict[str, Any]:
    at = f"2026-11-20T09:{minute // 60:02d}:{minute % 60:02d}Z"
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "organization_id": TENANT,
                "created_at": at,
                "updated_at": at,
                "user": {"id": "pmp-1", "organization_user_id": user},
                "consents": {
                    "purposes": [{"id": p, "enabled": on} for p, on in purposes.items()],
                    "channels": [{"id": c, "enabled": on} for c, on in (channels or {}).items()],
                },
            }
        },
    }


def user_updated(version: int, minute: int, old: dict[str, bool], new: dict[str, bool]) -> dict:
    def user(consents: dict[str, bool], at: str, v: int) -> dict:
        return {
            "id": "pmp-1",
            "organization_id": TENANT,
            "organization_user_id": "u1",
            "updated_at": at,
            "version": v,
            "consents": {"purposes": [{"id": p, "enabled": on} for p, on in consents.items()]},
        }

    at = f"2026-11-20T09:{minute:02d}:00Z"
    return {
        "type": "user.updated",
        "parameters": {
            "old_entity": user(old, at, version - 1),
            "new_entity": user(new, at, version),
        },
    }


def deliver(rt: Runtime, config: ConnectorConfig, *payloads: dict[str, Any]) -> dict:
    return rt.deliverer.deliver(TENANT, [parse_event(p) for p in payloads], config)


def sent_objects(mocked: responses.RequestsMock) -> list[dict[str, Any]]:
    return [
        obj
        for call in mocked.calls
        if call.request.url == TRACK
        for obj in json.loads(call.request.body)["attributes"]
    ]


def accept_braze(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=201, json={"message": "success"})


@pytest.fixture
def rt() -> Runtime:
    return new_runtime()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


# -- the cases of the rule, one at a time ----------------------------------------------------


def test_a_later_opt_in_to_one_list_does_not_resubscribe_someone_who_refused_all(rt, mocked):
    accept_braze(mocked)
    config = braze_config()
    deliver(rt, config, consent("mon", 1, email_optout=True))
    deliver(rt, config, consent("tue", 2, newsletter=True))

    assert [obj.get("email_subscribe") for obj in sent_objects(mocked)] == ["unsubscribed"]
    (entry, *_) = rt.audit.query(TENANT, user=rt.pseudonyms.user("u1"))
    assert (entry.outcome, entry.reason) == ("skipped", "unchanged")


def test_a_withdrawn_refusal_does_not_downgrade_a_standing_opt_in(rt, mocked):
    accept_braze(mocked)
    config = braze_config()
    deliver(rt, config, consent("mon", 1, newsletter=True))
    deliver(rt, config, consent("tue", 2, email_optout=False))
    # ...but a withdrawn opt-in does change the state, refusal or not.
    deliver(rt, config, consent("wed", 3, newsletter=False))

    assert [obj.get("email_subscribe") for obj in sent_objects(mocked)] == [
        "opted_in",
        "unsubscribed",
    ]


def test_a_standing_fed_field_is_left_out_and_the_other_fields_are_sent(rt, mocked):
    accept_braze(mocked)
    config = braze_config()
    deliver(rt, config, consent("mon", 1, email_optout=True))
    deliver(rt, config, consent("tue", 2, newsletter=True, product_updates=True))

    last = sent_objects(mocked)[-1]
    assert "email_subscribe" not in last
    assert last["subscription_groups"] == [
        {"subscription_group_id": GROUP, "subscription_state": "subscribed"}
    ]


def test_inputs_of_one_field_in_one_batch_are_coalesced_from_the_state(rt, mocked):
    accept_braze(mocked)
    deliver(
        rt, braze_config(), consent("b", 2, newsletter=True), consent("a", 1, email_optout=True)
    )

    assert [obj.get("email_subscribe") for obj in sent_objects(mocked)] == ["unsubscribed"]


def test_a_failed_send_of_a_fed_field_is_sent_again_by_its_retry(rt, mocked):
    config = braze_config()
    mocked.post(TRACK, status=503, json={"message": "unavailable"})
    assert deliver(rt, config, consent("mon", 1, newsletter=True))  # unfinished: to retry
    mocked.replace(responses.POST, TRACK, status=201, json={"message": "success"})

    assert deliver(rt, config, consent("mon", 1, newsletter=True)) == {}

    assert [obj.get("email_subscribe") for obj in sent_objects(mocked)] == ["opted_in", "opted_in"]


def test_a_user_update_reads_the_values_it_did_not_change_for_the_fields_they_feed(rt, mocked):
    accept_braze(mocked)
    # prefsync has never heard of the standing refusal: only this payload states it.
    deliver(
        rt,
        braze_config(),
        user_updated(
            5,
            1,
            {"newsletter": False, "email_optout": True},
            {"newsletter": True, "email_optout": True},
        ),
    )

    # Not opted_in: the unchanged refusal still stands.
    assert [obj.get("email_subscribe") for obj in sent_objects(mocked)] == ["unsubscribed"]
    assert known_values(rt.state, TENANT, "u1") == {NEWSLETTER: True, OPTOUT: True}


def test_push_consent_feeds_push_subscribe(rt, mocked):
    accept_braze(mocked)
    config = braze_config()
    deliver(rt, config, consent("a", 1, channels={"push": True}))
    deliver(rt, config, consent("b", 2, channels={"push": False}))

    assert [obj.get("push_subscribe") for obj in sent_objects(mocked)] == [
        "opted_in",
        "unsubscribed",
    ]
    assert all("email_subscribe" not in obj for obj in sent_objects(mocked))


@pytest.mark.parametrize(
    ("mapping_id", "field"),
    [
        ("EMAIL_CAMPAIGNS_SUBSCRIBED", "emailBlacklisted"),
        ("SMS_CAMPAIGNS_SUBSCRIBED", "smsBlacklisted"),
    ],
)
@pytest.mark.parametrize(("value", "blacklisted"), [(True, False), (False, True)])
def test_brevo_blocklists_are_the_inverse_of_the_subscription(
    mapping_id, field, value, blacklisted
):
    config = brevo_config()
    name = NEWSLETTER if mapping_id.startswith("EMAIL") else SMS
    change = standalone_change(config, "u1", {name: value})
    (request,) = config.connector.requests(config, change)
    assert request.json == {field: blacklisted}


def test_brevo_sms_and_email_blocklists_are_sent_when_they_change(rt, mocked):
    url = f"{BREVO}/contacts/u1?identifierType=ext_id"
    mocked.put(url, status=204)
    config = brevo_config()
    deliver(rt, config, consent("a", 1, newsletter=True, channels={"sms": False}))
    deliver(rt, config, consent("b", 2, channels={"sms": False}))  # nothing changes
    deliver(rt, config, consent("c", 3, channels={"sms": True}))

    bodies = [json.loads(call.request.body) for call in mocked.calls]
    assert bodies == [
        {"emailBlacklisted": False, "smsBlacklisted": True},
        {"smsBlacklisted": False},
    ]


# -- any order, duplicates, replays, failures -------------------------------------------------

PROPERTIES = {"newsletter": NEWSLETTER, "email_optout": OPTOUT}
events_strategy = st.lists(
    st.dictionaries(st.sampled_from(sorted(PROPERTIES)), st.booleans(), min_size=1),
    min_size=1,
    max_size=6,
)


def expected_email_state(events: list[dict[str, bool]]) -> str | None:
    """email_subscribe from the newest value of each property (events are in time order)."""
    newest: dict[str, bool] = {}
    for purposes in events:
        newest |= purposes
    states = []
    if "newsletter" in newest:
        states.append("opted_in" if newest["newsletter"] else "unsubscribed")
    if "email_optout" in newest:
        states.append("unsubscribed" if newest["email_optout"] else "subscribed")
    return min(states, key=EMAIL_STATES.index) if states else None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=events_strategy, data=st.data())
def test_the_last_email_state_sent_is_the_one_the_newest_values_give(events, data):
    """Events over two properties feeding email_subscribe, delivered in a random order, in
    random batches, with copies, replays and transient failures: the last email_subscribe
    Braze received is what the newest value of each property gives."""
    payloads = [consent(f"e{n}", n, **purposes) for n, purposes in enumerate(events)]
    order = data.draw(st.permutations(range(len(payloads))))
    copies = data.draw(st.lists(st.sampled_from(range(len(payloads))), max_size=3))
    queue = [payloads[n] for n in [*order, *copies]]
    rt, config = new_runtime(), braze_config()
    received: list[str] = []

    def answer(request: Any) -> tuple[int, dict, str]:
        if data.draw(st.booleans(), label="Braze fails this call"):
            return 503, {}, json.dumps({"message": "unavailable"})
        for obj in json.loads(request.body)["attributes"]:
            if "email_subscribe" in obj:
                received.append(obj["email_subscribe"])
        return 201, {}, json.dumps({"message": "success"})

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        mocked.add_callback(responses.POST, TRACK, callback=answer)
        rounds = 0
        while queue:
            rounds += 1
            assert rounds < 200, "deliveries never ended"
            size = data.draw(st.integers(1, len(queue)), label="batch size")
            batch, queue = queue[:size], queue[size:]
            unfinished = deliver(rt, config, *batch)
            queue += [batch[index] for index in unfinished]  # retried later
        # A replay of everything, long after: nothing it says is newer.
        for payload in payloads:
            deliver(rt, config, payload)

    expected = expected_email_state(events)
    assert (received[-1] if received else None) == expected
    # Never sent twice in a row: an unchanged state is not sent again.
    assert all(a != b for a, b in itertools.pairwise(received))
