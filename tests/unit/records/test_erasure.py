"""Erasure, piece by piece: the tombstone and the claim, what each on_user_deleted policy
sends to Braze and Brevo, how prefsync forgets the person, and the commands (the keyed hash
is in tests/unit/infra/test_pseudonym.py). fakeredis for Redis, ``responses`` for HTTP; the
e2e tests (tests/e2e/test_erasure.py) run the whole path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import responses
from click.testing import CliRunner

from tests.unit.conftest import install_runtime, known_values
from tests.unit.test_producer import broker
from worker.cli import main
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import PermanentError, RetryableError
from worker.core.events import OrderingKey, parse_event
from worker.delivery import pipeline
from worker.delivery.runtime import Runtime
from worker.infra.pseudonym import Pseudonyms
from worker.infra.settings import Settings, get_settings
from worker.records.deadletter import Attempt
from worker.records.person import load_record
from worker.records.state import StateStore, UserBusy, Write, key

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
ERASURE_DOC = Path(__file__).resolve().parents[3] / "docs" / "erasure.md"
TENANT = "acme"
JANE = "jane.doe@example.com"
PMP_ID = "pmp-jane-0001"
BRAZE = "https://rest.fra-01.braze.eu"
BREVO = "https://api.brevo.com/v3"
BRAZE_KEY = "braze-REST-KEY-0123456789abcdef"
BREVO_KEY = "xkeysib-TESTKEY-0123456789abcdef"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
NEWSLETTER = "consents_purposes_newsletter_enabled"
JANE_URL = f"{BREVO}/contacts/jane.doe%40example.com?identifierType=email_id"


# -- set-up ------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def brevo_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BREVO)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    runtime = install_runtime(monkeypatch, Settings(rate_limits={"sendinblue": 1000}))
    runtime.state.lock_wait = 0.05
    return runtime


def braze(rt: Runtime, policy: str, upsert: bool = True) -> ConnectorConfig:
    config = parse_config(
        {
            "id": "braze",
            "type_id": "braze",
            "authentication": {"api_key": BRAZE_KEY, "server": BRAZE},
            "mappings": [
                {"id": "OPTED_IN", "value": NEWSLETTER},
                {"id": "PUSH_OPTED_IN", "value": "consents_channels_push_enabled"},
                {"id": GROUP, "value": "consents_purposes_product_updates_enabled"},
                {"id": "likes_news", "value": NEWSLETTER},
            ],
            "upsert_mode": upsert,
            "on_user_deleted": policy,
        }
    )
    rt.configs.put(TENANT, config)
    return config


def brevo(rt: Runtime, policy: str, sms: bool = True) -> ConnectorConfig:
    mappings = [
        {"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER},
        {"id": "EMAIL_NOTIFICATION", "value": "consents_purposes_notifications_enabled"},
    ]
    if sms:
        mappings.append(
            {"id": "SMS_CAMPAIGNS_SUBSCRIBED", "value": "consents_channels_sms_enabled"}
        )
    config = parse_config(
        {
            "type_id": "sendinblue",
            "upsert_mode": True,
            "on_user_deleted": policy,
            "config": {"api_key": BREVO_KEY, "properties": mappings},
        }
    )
    rt.configs.put(TENANT, config)
    return config


def consent(event_id: str, minute: int, user: str = JANE, newsletter: bool = True) -> dict:
    at = f"2026-11-20T09:{minute:02d}:00Z"
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "organization_id": TENANT,
                "created_at": at,
                "updated_at": at,
                "user": {"id": PMP_ID, "organization_user_id": user},
                "consents": {"purposes": [{"id": "newsletter", "enabled": newsletter}]},
            }
        },
    }


def user_deleted(minute: int = 30, user: str = JANE) -> dict:
    at = f"2026-11-20T09:{minute:02d}:00Z"
    return {
        "type": "user.deleted",
        "parameters": {
            "entity": {
                "id": PMP_ID,
                "organization_id": TENANT,
                "organization_user_id": user,
                "version": 4,
                "created_at": at,
                "updated_at": at,
            }
        },
    }


def deliver(rt: Runtime, config: ConnectorConfig, *payloads: dict) -> dict:
    """Route then deliver ``payloads`` to one connector, as the tasks do."""
    assert pipeline.route(rt, list(payloads)).unfinished == {}
    return pipeline.deliver(rt, list(payloads), config.id)


def outcomes(rt: Runtime, user: str = JANE) -> list[tuple[str, str, str, str]]:
    """(connector, event type, outcome, reason) of the person's audit entries, oldest first."""
    entries = rt.audit.query(TENANT, user=rt.pseudonyms.user(user), limit=1000)
    return [
        (e.connector_id, e.event_key.split(":")[0], e.outcome, e.reason) for e in reversed(entries)
    ]


def everything(rt: Runtime) -> bytes:
    """Every key and value in Redis but the connector configs."""
    client = rt.redis
    parts = []
    for name in client.scan_iter():
        if name.startswith(b"prefsync:connectors:"):
            continue
        kind = client.type(name)
        value = {
            b"string": client.get,
            b"hash": client.hgetall,
            b"zset": lambda k: client.zrange(k, 0, -1),
            b"stream": client.xrange,
            b"set": client.smembers,
            b"list": lambda k: client.lrange(k, 0, -1),
        }[kind](name)
        parts += [name, repr(value).encode()]
    return b"\n".join(parts)


# -- the tombstone and the claim -------------------------------------------------------------


@pytest.fixture
def store() -> StateStore:
    return StateStore(
        fakeredis.FakeRedis(),
        state_ttl=3600,
        idempotency_ttl=60,
        lock_ttl=2,
        lock_wait=0.2,
        pseudonyms=Pseudonyms(b"test-hash-key"),
    )


def at(seconds: int) -> OrderingKey:
    return OrderingKey(seconds * 1_000_000, None)


def test_the_tombstone_only_moves_forward_and_lives_as_long_as_the_state(store) -> None:
    store.erase(TENANT, JANE, 20_000_000)
    store.erase(TENANT, JANE, 10_000_000)
    assert store.erased_at(TENANT, JANE) == 20_000_000
    assert 3500 < store.redis.ttl(key("person", TENANT, store.person(JANE))) <= 3600
    assert store.erased_at(TENANT, "john") is None


def test_events_dated_at_or_before_the_erasure_are_erased_and_later_ones_merged(store) -> None:
    store.erase(TENANT, JANE, at(20).timestamp_us)
    writes = {
        JANE: [
            Write("before", at(10), {NEWSLETTER: True}),
            Write("same-time", at(20), {NEWSLETTER: True}),
            Write("after", at(30), {"other": False}),
        ]
    }
    with store.claim(TENANT, "braze", writes) as claim:
        assert claim.erased == {(JANE, "before"), (JANE, "same-time")}
        assert claim.owners == {JANE: {"other": "after"}}
    assert known_values(store, TENANT, JANE) == {"other": False}


def test_an_erasure_claimed_writes_the_tombstone_before_the_events_beside_it(store) -> None:
    writes = {
        JANE: [
            Write("older", at(10), {NEWSLETTER: True}),
            Write("deleted", at(20), {}, erase=True),
        ]
    }
    with store.claim(TENANT, "braze", writes) as claim:
        assert claim.erased == {(JANE, "older")}
        assert claim.owners == {JANE: {}}
    assert store.erased_at(TENANT, JANE) == at(20).timestamp_us
    assert known_values(store, TENANT, JANE) == {}


def test_an_erasure_outranks_every_spelling_s_past_where_ids_fold_and_no_other(store) -> None:
    # Brevo names Jane.Doe@Example.com and jane.doe@example.com as one contact, Braze as two.
    store.erase(TENANT, "Jane.Doe@Example.COM", at(20).timestamp_us)

    def writes() -> dict[str, list[Write]]:
        return {
            JANE: [Write("older", at(10), {NEWSLETTER: True}), Write("newer", at(30), {"b": 1})]
        }

    with store.claim(TENANT, "sendinblue", writes(), folded_id=str.casefold) as claim:
        assert claim.erased == {(JANE, "older")}
        assert claim.owners == {JANE: {"b": "newer"}}
    with store.claim(TENANT, "braze", writes()) as claim:
        assert claim.erased == set()
        assert claim.owners == {JANE: {NEWSLETTER: "older", "b": "newer"}}
    assert store.erased_at(TENANT, JANE) is None
    names = b" ".join(store.redis.scan_iter()).lower()
    assert JANE.encode() not in names


def test_the_casefolded_tombstone_only_moves_forward_and_lives_as_long_as_the_state(store):
    store.erase(TENANT, "Jane.Doe@example.com", at(20).timestamp_us)
    store.erase(TENANT, JANE, at(10).timestamp_us)
    folded = store.folded(TENANT, JANE)
    assert store.folded_erased_at(TENANT, JANE) == at(20).timestamp_us
    assert 3500 < store.redis.ttl(folded) <= 3600
    with store.claim(TENANT, "sendinblue", {JANE: [Write("e", at(15), {})]}, 0, str.casefold) as c:
        assert c.erased == {(JANE, "e")}


def test_an_erasure_claimed_where_ids_fold_moves_the_casefolded_tombstone(store) -> None:
    # A deletion replayed from the dead letters reaches the claim without being routed.
    deleted = {"JANE.DOE@example.com": [Write("deleted", at(20), {}, erase=True)]}
    with store.claim(TENANT, "sendinblue", deleted, folded_id=str.casefold):
        pass
    older = {JANE: [Write("older", at(10), {NEWSLETTER: True})]}
    with store.claim(TENANT, "sendinblue", older, folded_id=str.casefold) as claim:
        assert claim.erased == {(JANE, "older")}


def claim_and_end(store: StateStore, connector_id: str, user: str, write: Write, **kw) -> dict:
    """Claim one event (locks free) and end it; the properties it owned."""
    with store.claim(TENANT, connector_id, {user: [write]}, **kw) as claim:
        assert claim.busy == set()
        with store.redis.pipeline() as pipe:
            store.finish(claim, {user: [write.event_key]}, {}, pipe)
            pipe.execute()
        claim.finished = True
        return claim.owners[user]


def test_where_ids_fold_an_older_value_of_another_spelling_is_stale(store) -> None:
    # One Brevo contact: a refusal must not be overwritten by an older consent of it.
    variant = "Jane.Doe@Example.com"
    refusal = Write("refusal", at(20), {NEWSLETTER: False})
    assert claim_and_end(store, "sendinblue", JANE, refusal, folded_id=str.casefold) == {
        NEWSLETTER: "refusal"
    }
    older = Write("older-consent", at(10), {NEWSLETTER: True})
    assert claim_and_end(store, "sendinblue", variant, older, folded_id=str.casefold) == {}
    # For Braze the variant is another person: their consent is theirs to send.
    assert claim_and_end(store, "braze", variant, older) == {NEWSLETTER: "older-consent"}
    newer = Write("newer-consent", at(30), {NEWSLETTER: True})
    assert claim_and_end(store, "sendinblue", variant, newer, folded_id=str.casefold) == {
        NEWSLETTER: "newer-consent"
    }


def test_where_ids_fold_a_spelling_in_flight_makes_the_others_busy(store) -> None:
    variant = "Jane.Doe@Example.com"
    write = Write("w", at(10), {NEWSLETTER: True})
    with store.claim(TENANT, "sendinblue", {JANE: [write]}, folded_id=str.casefold):
        with store.claim(TENANT, "sendinblue", {variant: [write]}, 0, str.casefold) as other:
            assert other.busy == {variant}
        with store.claim(TENANT, "braze", {variant: [write]}, 0) as braze:
            assert braze.busy == set()
    with store.claim(TENANT, "sendinblue", {variant: [write]}, 0, str.casefold) as other:
        assert other.busy == set()


def test_forgetting_the_erased_person_forgets_their_values_among_every_spelling(store) -> None:
    claim_and_end(
        store, "sendinblue", JANE, Write("w", at(10), {NEWSLETTER: True}), folded_id=str.casefold
    )
    store.erase(TENANT, JANE, at(20).timestamp_us)
    store.forget_erased(TENANT, JANE, ["sendinblue"], at(20).timestamp_us)
    folded = load_record(store.redis.get(store.folded(TENANT, JANE)))
    assert folded["p"] == {} and folded["e"] == str(at(20).timestamp_us)


def test_done_markers_and_every_key_name_the_person_by_hash_only(store) -> None:
    with (
        store.claim(
            TENANT, "braze", {JANE: [Write(f"user.updated:{PMP_ID}:t", at(5), {NEWSLETTER: True})]}
        ) as claim,
        store.redis.pipeline() as pipe,
    ):
        store.finish(claim, {JANE: [f"user.updated:{PMP_ID}:t"]}, {JANE: {"f": 1}}, pipe)
        pipe.execute()
    names = b" ".join(store.redis.scan_iter())
    assert JANE.encode() not in names and PMP_ID.encode() not in names
    assert store.is_done(TENANT, "braze", JANE, f"user.updated:{PMP_ID}:t")
    assert not store.is_done(TENANT, "braze", "john", f"user.updated:{PMP_ID}:t")


def test_forgetting_an_erased_person_keeps_a_new_life_and_the_tombstone(store) -> None:
    writes = {JANE: [Write("old", at(10), {NEWSLETTER: True}), Write("new", at(30), {"b": True})]}
    with store.claim(TENANT, "braze", writes) as claim, store.redis.pipeline() as pipe:
        store.finish(claim, {JANE: ["old", "new"]}, {JANE: {"email_subscribe": "opted_in"}}, pipe)
        pipe.execute()
    store.erase(TENANT, JANE, at(20).timestamp_us)

    store.forget_erased(TENANT, JANE, ["braze", "sendinblue"], at(20).timestamp_us)

    assert known_values(store, TENANT, JANE) == {"b": True}
    assert store.delivered(TENANT, "braze", JANE) == {}
    assert not store.is_done(TENANT, "braze", JANE, "old")
    assert store.erased_at(TENANT, JANE) == at(20).timestamp_us


# -- policies: what each destination is sent -------------------------------------------------


def test_ignore_sends_nothing_and_says_why(rt: Runtime) -> None:
    config = braze(rt, "ignore")
    with responses.RequestsMock():  # any call would fail the test
        assert deliver(rt, config, user_deleted()) == {}
    assert outcomes(rt) == [("braze", "user.deleted", "skipped", "unsupported_type")]


def test_braze_delete_posts_users_delete(rt: Runtime) -> None:
    config = braze(rt, "delete")
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=201, json={"deleted": 1, "message": "success"})
        assert deliver(rt, config, user_deleted()) == {}
        (call,) = mocked.calls
    assert json.loads(call.request.body) == {"external_ids": [JANE]}
    assert outcomes(rt) == [("braze", "user.deleted", "delivered", "")]


def test_braze_deletes_up_to_50_people_a_call_and_an_unknown_id_is_not_an_error(rt) -> None:
    config = braze(rt, "delete")
    people = [f"u{n}@example.com" for n in range(60)]
    events = [parse_event(user_deleted(user=person)) for person in people]
    with responses.RequestsMock() as mocked:
        # Braze counts what it queued: unknown ids are simply not counted.
        mocked.post(f"{BRAZE}/users/delete", status=201, json={"deleted": 3, "message": "success"})
        assert rt.deliverer.deliver(TENANT, events, config) == {}
        sizes = [len(json.loads(c.request.body)["external_ids"]) for c in mocked.calls]
    assert sizes == [50, 10]


def test_a_braze_400_on_a_deletion_call_splits_it_and_refuses_only_the_one(rt) -> None:
    braze(rt, "delete")
    people = ["a@example.com", "bad", "c@example.com", "d@example.com"]

    def answer(request):
        ids = json.loads(request.body)["external_ids"]
        if "bad" in ids:
            return (400, {}, json.dumps({"message": "Invalid external_id"}))
        return (201, {}, json.dumps({"deleted": len(ids), "message": "success"}))

    with responses.RequestsMock() as mocked:
        mocked.add_callback(responses.POST, f"{BRAZE}/users/delete", callback=answer)
        left = pipeline.deliver(rt, [user_deleted(user=person) for person in people], "braze")
        calls = [json.loads(c.request.body)["external_ids"] for c in mocked.calls]
    assert list(left) == [1] and isinstance(left[1], PermanentError)
    assert calls == [people, people[:2], ["a@example.com"], ["bad"], people[2:]]


def test_braze_deletions_are_paced_apart_from_updates(rt: Runtime) -> None:
    config = braze(rt, "delete")
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=201, json={"deleted": 1, "message": "success"})
        mocked.post(f"{BRAZE}/users/track", status=201, json={"message": "success"})
        deliver(rt, config, consent("c1", 1, user="john@example.com"), user_deleted())
    buckets = sorted(name.decode() for name in rt.redis.scan_iter("prefsync:pace:*"))
    assert len(buckets) == 2 and buckets[0].startswith("prefsync:pace:braze:")
    assert buckets[1].startswith("prefsync:pace:braze:erasure:")


@pytest.mark.parametrize("status", [401, 403])
def test_a_braze_key_without_the_delete_permission_is_refused_naming_it(rt, status) -> None:
    config = braze(rt, "delete")
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=status, json={"message": "Forbidden"})
        (why,) = deliver(rt, config, user_deleted()).values()
    assert isinstance(why, PermanentError) and why.operator_action
    assert "users.delete permission" in str(why) and BRAZE_KEY not in str(why)


def test_a_braze_outage_on_delete_is_retried(rt: Runtime) -> None:
    config = braze(rt, "delete")
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=503, json={"message": "down"})
        (why,) = deliver(rt, config, user_deleted()).values()
    assert isinstance(why, RetryableError)
    assert rt.state.erased_at(TENANT, JANE) is not None  # older events stay outranked


def test_braze_unsubscribe_refuses_every_mapped_subscription_and_never_creates(rt) -> None:
    config = braze(rt, "unsubscribe", upsert=True)
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/track", status=201, json={"message": "success"})
        assert deliver(rt, config, user_deleted()) == {}
        (call,) = mocked.calls
    assert json.loads(call.request.body) == {
        "attributes": [
            {
                "external_id": JANE,
                "_update_existing_only": True,
                "email_subscribe": "unsubscribed",
                "push_subscribe": "unsubscribed",
                "subscription_groups": [
                    {"subscription_group_id": GROUP, "subscription_state": "unsubscribed"}
                ],
            }
        ]
    }


def test_brevo_delete_sends_delete_and_a_404_means_already_gone(rt: Runtime) -> None:
    config = brevo(rt, "delete")
    gone = {"code": "document_not_found", "message": "Contact does not exist"}
    with responses.RequestsMock() as mocked:
        mocked.delete(JANE_URL, status=204)
        mocked.delete(
            f"{BREVO}/contacts/john%40example.com?identifierType=email_id", status=404, json=gone
        )
        assert deliver(rt, config, user_deleted()) == {}
        assert deliver(rt, config, user_deleted(user="john@example.com")) == {}
    assert outcomes(rt) == [("sendinblue", "user.deleted", "delivered", "")]
    assert outcomes(rt, "john@example.com") == [
        ("sendinblue", "user.deleted", "skipped", "contact_unknown")
    ]


@pytest.mark.parametrize(("sms", "body"), [
    (True, {"emailBlacklisted": True, "smsBlacklisted": True}),
    (False, {"emailBlacklisted": True}),
])  # fmt: skip
def test_brevo_unsubscribe_blocklists_and_skips_an_unknown_contact(rt, sms, body) -> None:
    config = brevo(rt, "unsubscribe", sms=sms)
    gone = {"code": "document_not_found", "message": "Contact does not exist"}
    with responses.RequestsMock() as mocked:
        mocked.put(JANE_URL, status=404, json=gone)  # no create follows, upsert or not
        assert deliver(rt, config, user_deleted()) == {}
        (call,) = mocked.calls
    assert json.loads(call.request.body) == body
    assert outcomes(rt) == [("sendinblue", "user.deleted", "skipped", "contact_unknown")]


@pytest.mark.parametrize(("mapping_id", "body"), [
    ("SMS_CAMPAIGNS_SUBSCRIBED", {"emailBlacklisted": True, "smsBlacklisted": True}),
    ("EMAIL_NOTIFICATION", {"emailBlacklisted": True}),
])  # fmt: skip
def test_brevo_unsubscribe_stops_email_whatever_the_connector_maps(rt, mapping_id, body) -> None:
    # As docs/erasure.md says: a connector mapping only SMS, or only attributes, still
    # blocklists the erased person's email.
    rt.configs.put(TENANT, parse_config({
        "type_id": "sendinblue", "on_user_deleted": "unsubscribe",
        "config": {"api_key": BREVO_KEY, "properties": [{"id": mapping_id, "value": NEWSLETTER}]},
    }))  # fmt: skip
    with responses.RequestsMock() as mocked:
        mocked.put(JANE_URL, status=204)
        assert deliver(rt, rt.configs.get(TENANT, "sendinblue"), user_deleted()) == {}
        (call,) = mocked.calls
    assert json.loads(call.request.body) == body
    assert outcomes(rt) == [("sendinblue", "user.deleted", "delivered", "")]
    row = next(line for line in ERASURE_DOC.read_text().splitlines() if line.startswith("| `unsub"))
    assert "`emailBlacklisted: true` whatever the connector maps" in row.split(" | ")[2]


def test_in_one_batch_the_erasure_goes_first_and_a_newer_event_comes_back_after(rt) -> None:
    braze(rt, "delete")
    batch = [consent("older", 10), user_deleted(30), user_deleted(20), consent("newer", 40)]
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=201, json={"deleted": 1, "message": "success"})
        mocked.post(f"{BRAZE}/users/track", status=201, json={"message": "success"})
        assert pipeline.route(rt, batch).unfinished == {}
        left = pipeline.deliver(rt, batch, "braze")
        assert [c.request.url for c in mocked.calls] == [f"{BRAZE}/users/delete"]
        assert list(left) == [3] and isinstance(left[3], UserBusy)  # a new life: deferred
        assert pipeline.deliver(rt, [batch[3]], "braze") == {}  # ... then sent
        assert [c.request.url for c in mocked.calls][1:] == [f"{BRAZE}/users/track"]
    assert sorted((kind, outcome, reason) for _, kind, outcome, reason in outcomes(rt)) == [
        ("event.created", "delivered", ""),  # the new life
        ("event.created", "skipped", "erased"),
        ("user.deleted", "delivered", ""),  # the newest deletion carries it
        ("user.deleted", "skipped", "duplicate"),
    ]


# -- erasure outranks the past; prefsync forgets -------------------------------------------


def accept_all(mocked: responses.RequestsMock) -> None:
    mocked.post(f"{BRAZE}/users/delete", status=201, json={"deleted": 1, "message": "success"})
    mocked.post(f"{BRAZE}/users/track", status=201, json={"message": "success"})
    mocked.delete(JANE_URL, status=204)
    mocked.put(JANE_URL, status=204)


def test_after_the_erasure_redis_holds_nothing_of_the_person_and_older_events_are_erased(
    rt: Runtime,
) -> None:
    configs = [braze(rt, "delete"), brevo(rt, "delete")]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        accept_all(mocked)
        for config in configs:
            deliver(rt, config, consent("c1", 1))
        for config in configs:
            deliver(rt, config, user_deleted())
        assert JANE.encode() not in everything(rt) and PMP_ID.encode() not in everything(rt)
        sent = len(mocked.calls)
        for config in configs:
            deliver(rt, config, consent("late", 2))
        assert len(mocked.calls) == sent
    assert outcomes(rt)[-2:] == [
        ("braze", "event.created", "skipped", "erased"),
        ("sendinblue", "event.created", "skipped", "erased"),
    ]
    assert JANE.encode() not in everything(rt)


def test_the_person_is_forgotten_only_once_every_connector_ended_its_part(rt: Runtime) -> None:
    configs = [braze(rt, "delete"), brevo(rt, "delete")]
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        accept_all(mocked)
        deliver(rt, configs[0], consent("c1", 1))
        deliver(rt, configs[0], user_deleted())
        assert known_values(rt.state, TENANT, JANE) != {}  # Brevo's part is still to come
        pipeline.deliver(rt, [user_deleted()], "sendinblue")
    assert known_values(rt.state, TENANT, JANE) == {}


def test_dead_letters_of_earlier_events_go_and_the_deletion_s_own_stays(rt: Runtime) -> None:
    config = braze(rt, "delete")

    def dead_letter(payload: dict) -> None:
        pipeline.dead_letter(
            rt,
            payload=payload,
            connector_id="braze",
            attempts=[Attempt(at=1.0, status=403, error="no")],
            exc=PermanentError("no", status=403),
            now=2.0,
        )

    dead_letter(consent("c1", 1))
    dead_letter(consent("c2", 1, user="john@example.com"))
    dead_letter(consent("new-life", 59))
    assert rt.deadletters.count() == 3
    with responses.RequestsMock() as mocked:
        mocked.post(f"{BRAZE}/users/delete", status=403, json={"message": "no permission"})
        pipeline.route(rt, [user_deleted()])
        (refused,) = pipeline.deliver(rt, [user_deleted()], config.id).values()
    assert isinstance(refused, PermanentError)
    dead_letter(user_deleted())  # what the task does with the refusal: the part ends

    left = sorted((e.user, e.event_key.split(":")[1]) for e in rt.deadletters.list())
    assert left == [(JANE, "new-life"), (JANE, PMP_ID), ("john@example.com", "c2")]


def test_a_dead_letter_of_an_erased_event_is_not_kept(rt: Runtime) -> None:
    rt.state.erase(TENANT, JANE, parse_event(user_deleted()).ordering.timestamp_us)
    kept = pipeline.dead_letter(
        rt,
        payload=consent("c1", 1),
        connector_id="braze",
        attempts=[Attempt(at=1.0, status=None, error="gave up")],
        exc=RetryableError("gave up"),
        now=2.0,
    )
    assert kept is None and rt.deadletters.count() == 0
    assert outcomes(rt) == [("braze", "event.created", "skipped", "erased")]


def test_a_dead_letter_of_another_spelling_is_not_kept_for_brevo_but_is_for_braze(rt) -> None:
    braze(rt, "delete")
    brevo(rt, "delete")
    rt.state.erase(
        TENANT, "Jane.Doe@Example.com", parse_event(user_deleted()).ordering.timestamp_us
    )
    for connector_id in ("sendinblue", "braze"):
        pipeline.dead_letter(
            rt,
            payload=consent("c1", 1),
            connector_id=connector_id,
            attempts=[Attempt(at=1.0, status=400, error="refused")],
            exc=PermanentError("refused"),
            now=2.0,
        )
    assert [entry.connector_id for entry in rt.deadletters.iter(tenant=TENANT)] == ["braze"]
    assert outcomes(rt)[0] == ("sendinblue", "event.created", "skipped", "erased")


def test_forgetting_drops_brevo_dead_letters_of_every_spelling_and_keeps_braze_s(rt) -> None:
    braze(rt, "delete")
    brevo(rt, "delete")
    variant = "Jane.Doe@Example.com"
    for connector_id in ("sendinblue", "braze"):
        rt.deadletters.add(
            tenant=TENANT,
            connector_id=connector_id,
            user=variant,
            event_key="event.created:c1",
            payload=consent("c1", 1, user=variant),
            attempts=[Attempt(at=1.0, status=400, error="refused")],
            reason="refused",
            dead_lettered_at=2.0,
        )
    rt.erasures.forget(TENANT, JANE, parse_event(user_deleted()).ordering.timestamp_us)
    left = [(e.connector_id, e.user) for e in rt.deadletters.iter(tenant=TENANT)]
    assert left == [("braze", variant)]


def test_a_tenant_without_connectors_forgets_at_once(rt: Runtime) -> None:
    rt.state.forget(TENANT, JANE, [])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mocked:
        accept_all(mocked)
        config = braze(rt, "delete")
        deliver(rt, config, consent("c1", 1))
    rt.configs.delete(TENANT, "braze")
    pipeline.route(rt, [user_deleted()])
    assert known_values(rt.state, TENANT, JANE) == {}
    assert rt.state.erased_at(TENANT, JANE) is not None


# -- configs, preview, commands -------------------------------------------------------------


@pytest.mark.parametrize("name", ["braze-push-erasure.json", "sendinblue-sms-erasure.json"])
def test_on_user_deleted_sits_at_the_top_level_in_both_shapes(name: str) -> None:
    raw = json.loads((EXAMPLES / "connectors" / name).read_text())
    config = parse_config(raw)
    assert config.on_user_deleted == raw["on_user_deleted"]
    assert config.describe()["on_user_deleted"] == raw["on_user_deleted"]
    assert parse_config({**raw, "on_user_deleted": "ignore"}).on_user_deleted == "ignore"
    without = {k: v for k, v in raw.items() if k != "on_user_deleted"}
    assert parse_config(without).on_user_deleted == "ignore"


def test_an_unknown_policy_is_refused_naming_the_field() -> None:
    raw = json.loads((EXAMPLES / "connectors" / "braze-push-erasure.json").read_text())
    with pytest.raises(Exception, match="on_user_deleted: input should be 'ignore'"):
        parse_config({**raw, "on_user_deleted": "erase"})


def test_connectors_list_and_show_print_the_policy(rt: Runtime) -> None:
    braze(rt, "delete")
    runner = CliRunner()
    assert "on_user_deleted=delete" in runner.invoke(main, ["connectors", "list", TENANT]).output
    shown = json.loads(runner.invoke(main, ["connectors", "show", TENANT, "braze"]).output)
    assert shown["on_user_deleted"] == "delete"


def test_preview_shows_the_exact_erasure_calls(rt: Runtime, tmp_path: Path) -> None:
    braze(rt, "delete")
    brevo(rt, "unsubscribe")
    path = tmp_path / "deleted.json"
    path.write_text(json.dumps(user_deleted()))
    shown = CliRunner().invoke(main, ["preview", TENANT, str(path), "--json"])
    by_id = {p["connector_id"]: p["requests"] for p in json.loads(shown.output)}
    [(delete,)] = [by_id["braze"]]
    assert (delete["method"], delete["url"]) == ("POST", f"{BRAZE}/users/delete")
    assert delete["body"] == {"external_ids": [JANE]}
    [(put,)] = [by_id["sendinblue"]]
    assert (put["method"], put["url"]) == ("PUT", JANE_URL)
    assert put["body"] == {"emailBlacklisted": True, "smsBlacklisted": True}
    assert BRAZE_KEY not in shown.output and BREVO_KEY not in shown.output


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    return broker(monkeypatch)


def test_prefsync_erase_enqueues_a_user_deleted_dated_now(rt: Runtime, published) -> None:
    refused = CliRunner().invoke(main, ["erase", TENANT, JANE], input="n\n")
    assert refused.exit_code == 1 and published == []

    done = CliRunner().invoke(main, ["erase", TENANT, JANE, "--yes"])
    assert done.exit_code == 0, done.output
    assert JANE not in done.output and rt.pseudonyms.user(JANE) in done.output
    [(name, args)] = published
    [[payload]] = args
    event = parse_event(payload)
    assert (name, event.type, event.tenant, event.user) == (
        "prefsync.route",
        "user.deleted",
        TENANT,
        JANE,
    )
    assert abs(event.ordering.timestamp_us / 1e6 - rt.clock.now()) < 5
