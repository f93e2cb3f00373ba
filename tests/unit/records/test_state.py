"""Newest-wins state, what each connector was told (idempotency) and the per-user locks,
all in one record per person: StateStore.claim and finish (fakeredis + Lua)."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import fakeredis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.conftest import hold_elsewhere, known_values, lock_holder
from worker.core.events import MAX_VERSION, MAX_VERSION_STEP, OrderingKey, Value
from worker.infra.pseudonym import Pseudonyms
from worker.records.person import load_record
from worker.records.state import Owners, StateStore, Write, key

NEWSLETTER = "consents_purposes_newsletter_enabled"
PRODUCT = "consents_purposes_product_enabled"
FREQUENCY = "consents_purposes_newsletter_values_frequency_value"


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


def at(seconds: int, version: int | None = None) -> OrderingKey:
    return OrderingKey(timestamp_us=seconds * 1_000_000, version=version)


def merge(store: StateStore, tenant: str, writes_by_user: Mapping[str, list[Write]]) -> Owners:
    """Claim the users (locks free), which merges their writes; the owners it reports."""
    with store.claim(tenant, "braze", writes_by_user) as claim:
        assert claim.busy == set()
        return claim.owners


def merge_one(
    store: StateStore,
    tenant: str,
    user: str,
    event_key: str,
    ordering: OrderingKey,
    values: Mapping[str, Value],
) -> set[str]:
    """Merge one event alone; the properties it owns afterwards."""
    owners = merge(store, tenant, {user: [Write(event_key, ordering, values)]})
    assert set(owners) == {user}
    assert set(owners[user].values()) <= {event_key}
    return set(owners[user])


# -- one event at a time ---------------------------------------------------------------------


def test_first_event_owns_every_property_it_sets(store):
    owned = merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True, PRODUCT: False})
    assert owned == {NEWSLETTER, PRODUCT}
    assert known_values(store, "acme", "u1") == {NEWSLETTER: True, PRODUCT: False}


def test_older_event_does_not_overwrite_a_newer_value_but_keeps_its_other_fields(store):
    merge_one(store, "acme", "u1", "B", at(20), {NEWSLETTER: False})
    owned = merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True, PRODUCT: True})
    assert owned == {PRODUCT}
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False, PRODUCT: True}


def test_newer_event_takes_over_and_the_older_one_no_longer_owns_it(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True})
    assert merge_one(store, "acme", "u1", "B", at(20), {NEWSLETTER: False}) == {NEWSLETTER}
    # A retry of A after B merged: A owns nothing any more.
    assert merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True}) == set()
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


def test_the_same_event_merged_again_still_owns_its_values(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True})
    assert merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True}) == {NEWSLETTER}


def test_between_user_payloads_the_higher_version_wins_even_with_an_older_timestamp(store):
    merge_one(store, "acme", "u1", "v5", at(10, version=5), {NEWSLETTER: False})
    assert merge_one(store, "acme", "u1", "v4", at(99, version=4), {NEWSLETTER: True}) == set()
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


def test_a_version_far_ahead_does_not_make_a_later_opt_out_stale(store):
    merge_one(store, "acme", "u1", "forged", at(10, version=10**15), {NEWSLETTER: True})
    assert merge_one(store, "acme", "u1", "opt-out", at(20, version=8), {NEWSLETTER: False}) == {
        NEWSLETTER
    }
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


@settings(max_examples=40, deadline=None)
@given(
    known=st.integers(min_value=0, max_value=MAX_VERSION - MAX_VERSION_STEP - 2),
    ahead=st.integers(min_value=1, max_value=MAX_VERSION),
    forged_at=st.integers(min_value=1, max_value=1_000),
)
def test_the_record_lets_a_persons_next_changes_outrank_any_version(known, ahead, forged_at):
    """The same bound in the claim's Lua as in OrderingKey: whatever version one event
    carries, one of the person's next MAX_VERSION_STEP + 1 changes owns the property."""
    store = StateStore(
        fakeredis.FakeRedis(),
        state_ttl=3600,
        idempotency_ttl=60,
        lock_ttl=2,
        lock_wait=0.2,
        pseudonyms=Pseudonyms(b"test-hash-key"),
    )
    forged = min(known + ahead, MAX_VERSION)
    merge_one(store, "acme", "u1", "forged", at(forged_at, version=forged), {NEWSLETTER: True})
    for step in range(1, MAX_VERSION_STEP + 2):
        later = at(1_000 + step, version=known + step)
        if merge_one(store, "acme", "u1", f"change-{step}", later, {NEWSLETTER: False}):
            break
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


def test_without_versions_on_both_sides_the_later_timestamp_wins(store):
    merge_one(store, "acme", "u1", "user", at(10, version=7), {NEWSLETTER: False})
    assert merge_one(store, "acme", "u1", "consent", at(11), {NEWSLETTER: True}) == {NEWSLETTER}
    assert known_values(store, "acme", "u1") == {NEWSLETTER: True}


def test_an_exact_tie_keeps_the_value_already_recorded(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: False})
    assert merge_one(store, "acme", "u1", "B", at(10), {NEWSLETTER: True}) == set()
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


def test_string_values_with_tabs_and_event_keys_with_tabs_survive(store):
    owned = merge_one(store, "acme", "u1", "key\twith\ttabs", at(10), {"p": "weekly\tdaily"})
    assert owned == {"p"}
    assert known_values(store, "acme", "u1") == {"p": "weekly\tdaily"}
    again = merge_one(store, "acme", "u1", "key\twith\ttabs", at(10), {"p": "weekly\tdaily"})
    assert again == {"p"}
    # A newer event still compares against the stored entry correctly.
    assert merge_one(store, "acme", "u1", "B\t", at(11), {"p": "never"}) == {"p"}
    assert known_values(store, "acme", "u1") == {"p": "never"}


def test_tenants_and_users_with_separators_never_share_state(store):
    merge_one(store, "a:b", "c", "A", at(10), {NEWSLETTER: True})
    merge_one(store, "a", "b:c", "B", at(5), {NEWSLETTER: False})
    assert known_values(store, "a:b", "c") == {NEWSLETTER: True}
    assert known_values(store, "a", "b:c") == {NEWSLETTER: False}


def test_merged_state_expires(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True})
    assert 0 < store.redis.ttl(key("person", "acme", store.person("u1"))) <= 3600


# -- several events and users in one call ----------------------------------------------------


def test_two_events_of_one_user_in_one_call_newest_wins_per_property(store):
    # Newer first, then older: whichever order the batch holds them in.
    for order in ([0, 1], [1, 0]):
        store.redis.flushall()
        writes = [
            Write("new", at(20), {NEWSLETTER: False}),
            Write("old", at(10), {NEWSLETTER: True, PRODUCT: True}),
        ]
        owners = merge(store, "acme", {"u1": [writes[i] for i in order]})
        assert owners == {"u1": {NEWSLETTER: "new", PRODUCT: "old"}}
        assert known_values(store, "acme", "u1") == {NEWSLETTER: False, PRODUCT: True}


def test_a_tie_inside_one_call_keeps_the_value_written_first(store):
    owners = merge(
        store,
        "acme",
        {"u1": [Write("A", at(10), {NEWSLETTER: False}), Write("B", at(10), {NEWSLETTER: True})]},
    )
    assert owners == {"u1": {NEWSLETTER: "A"}}
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False}


def test_a_property_owned_by_a_stored_newer_event_outside_the_call_is_not_returned(store):
    merge_one(store, "acme", "u1", "stored", at(30), {NEWSLETTER: False})
    owners = merge(
        store,
        "acme",
        {
            "u1": [
                Write("A", at(10), {NEWSLETTER: True, PRODUCT: True}),
                Write("B", at(20), {NEWSLETTER: True, FREQUENCY: "weekly"}),
            ]
        },
    )
    # "stored" still owns NEWSLETTER; it is no write of this call, so it is not named.
    assert owners == {"u1": {PRODUCT: "A", FREQUENCY: "B"}}
    assert known_values(store, "acme", "u1") == {
        NEWSLETTER: False,
        PRODUCT: True,
        FREQUENCY: "weekly",
    }


def test_several_users_in_one_call_are_merged_apart(store):
    merge_one(store, "acme", "u2", "u2-stored", at(50), {NEWSLETTER: True})
    owners = merge(
        store,
        "acme",
        {
            "u1": [Write("u1-a", at(10), {NEWSLETTER: True})],
            "u2": [Write("u2-a", at(20), {NEWSLETTER: False, PRODUCT: False})],
            "u3": [],  # nothing to write: still answered, owning nothing
            "u4": [Write("u4-a", at(10), {})],
        },
    )
    assert owners == {
        "u1": {NEWSLETTER: "u1-a"},
        "u2": {PRODUCT: "u2-a"},
        "u3": {},
        "u4": {},
    }
    assert known_values(store, "acme", "u1") == {NEWSLETTER: True}
    assert known_values(store, "acme", "u2") == {NEWSLETTER: True, PRODUCT: False}
    assert known_values(store, "acme", "u3") == {}


# -- what ended, per connector (idempotency) -------------------------------------------------


def end(store: StateStore, tenant: str, connector_id: str, writes: dict[str, list[Write]]) -> None:
    """Claim the users' writes and record them all ended, as a delivery does."""
    with store.claim(tenant, connector_id, writes) as claim, store.redis.pipeline() as pipe:
        done = {user: [write.event_key for write in found] for user, found in writes.items()}
        store.finish(claim, done, {}, pipe)
        pipe.execute()


def test_what_ended_is_kept_per_connector_in_one_record_per_person(store):
    end(
        store,
        "acme",
        "braze",
        {
            "u1": [Write("A", at(10), {NEWSLETTER: True})],
            "u2": [Write("B", at(10), {PRODUCT: True})],
        },
    )
    assert store.is_done("acme", "braze", "u1", "A")
    assert store.is_done("acme", "braze", "u2", "B")
    assert not store.is_done("acme", "sendinblue", "u1", "A")
    assert not store.is_done("other", "braze", "u1", "A")
    assert not store.is_done("acme", "braze", "u2", "A")
    records = list(store.redis.scan_iter("prefsync:person:*"))
    assert len(records) == 2  # one per person: no marker per event
    for record in records:
        assert 0 < store.redis.ttl(record) <= 3600
        assert b"u1" not in record + store.redis.get(record)  # the keyed hash names them
    # What a connector was told is a short keyed hash of the event key.
    told = load_record(store.redis.get(key("person", "acme", store.person("u1"))))["t"]
    assert told == {"braze": {NEWSLETTER: store._ref("A")[:16]}}


def test_a_claim_reports_the_events_already_told_and_sends_only_the_others(store):
    end(store, "acme", "braze", {"u1": [Write("A", at(20), {NEWSLETTER: False})]})
    writes = {"u1": [Write("A", at(20), {NEWSLETTER: False}), Write("B", at(10), {PRODUCT: True})]}
    with store.claim("acme", "braze", writes) as claim:
        assert claim.done == {("u1", "A")}
        assert claim.owners == {"u1": {PRODUCT: "B"}}
    assert known_values(store, "acme", "u1") == {NEWSLETTER: False, PRODUCT: True}
    # Told to braze, not to another connector: there, A owns its value and is sent.
    with store.claim("acme", "sendinblue", writes) as claim:
        assert claim.done == set()
        assert claim.owners == {"u1": {NEWSLETTER: "A", PRODUCT: "B"}}


def test_a_retry_after_a_failed_send_still_owns_and_sends(store):
    writes = {"u1": [Write("A", at(10), {NEWSLETTER: False})]}
    with store.claim("acme", "braze", writes) as claim, store.redis.pipeline() as pipe:
        store.finish(claim, {}, {}, pipe)  # the send failed: nothing ended
        pipe.execute()
    with store.claim("acme", "braze", writes) as claim:
        assert claim.done == set()
        assert claim.owners == {"u1": {NEWSLETTER: "A"}}


def test_a_copy_of_an_event_told_then_superseded_is_stale_and_never_sent(store):
    end(store, "acme", "braze", {"u1": [Write("A", at(10), {NEWSLETTER: True})]})
    end(store, "acme", "braze", {"u1": [Write("B", at(20), {NEWSLETTER: False})]})
    with store.claim("acme", "braze", {"u1": [Write("A", at(10), {NEWSLETTER: True})]}) as claim:
        assert claim.done == set() and claim.owners == {"u1": {}}
    assert not store.is_done("acme", "braze", "u1", "A")
    assert store.is_done("acme", "braze", "u1", "B")


def test_the_record_grows_with_properties_not_with_events(store):
    for n in range(50):
        end(store, "acme", "braze", {"u1": [Write(f"e-{n}", at(n + 1), {NEWSLETTER: n % 2 == 0})]})
    record = key("person", "acme", store.person("u1"))
    with store.claim("acme", "braze", {"u1": []}):
        pass
    size = len(store.redis.get(record))
    for n in range(50, 500):
        end(store, "acme", "braze", {"u1": [Write(f"e-{n}", at(n + 1), {NEWSLETTER: n % 2 == 0})]})
    with store.claim("acme", "braze", {"u1": []}):
        pass
    assert len(store.redis.get(record)) <= size + 8  # a longer event key, at most
    assert store.is_done("acme", "braze", "u1", "e-499")


def test_one_event_key_of_two_users_is_two_events(store):
    end(store, "acme", "braze", {"u1": [Write("A", at(10), {NEWSLETTER: False})]})
    assert not store.is_done("acme", "braze", "u2", "A")
    writes = {"u2": [Write("A", at(10), {NEWSLETTER: False})]}
    with store.claim("acme", "braze", writes) as claim:
        assert claim.done == set()
        assert claim.owners == {"u2": {NEWSLETTER: "A"}}


def older_release_ran(store: StateStore) -> None:
    """What every older release left: its outcome counters
    (worker.records.legacy.PreviousRelease.live)."""
    store.redis.hset("prefsync:stats", "delivered", 1)


def test_a_done_marker_of_the_older_shape_still_counts_until_it_expires(store):
    # Written two releases ago, whose markers did not name the user.
    older_release_ran(store)
    store.redis.set(key("done", "acme", "braze", "A"), 1, ex=60)
    assert store.is_done("acme", "braze", "u1", "A")
    with store.claim("acme", "braze", {"u1": [Write("A", at(10), {NEWSLETTER: True})]}) as claim:
        assert claim.done == {("u1", "A")}
    assert known_values(store, "acme", "u1") == {}


def test_the_records_of_the_release_before_are_honoured_and_folded_in(store):
    older_release_ran(store)
    person = store.person("u1")
    entry = f"{at(10).timestamp_us}\t\ttrue\tA"
    store.redis.hset(key("state", "acme", person), NEWSLETTER, entry)
    store.redis.hset(key("sent", "acme", "braze", person), "email_subscribe", '"opted_in"')
    store.redis.set(key("erased", "acme", person), at(5).timestamp_us)
    store.redis.zadd(key("dones", "acme", "braze", person), {store._ref("A"): 1e12})
    assert known_values(store, "acme", "u1") == {NEWSLETTER: True}
    assert store.delivered("acme", "braze", "u1") == {"email_subscribe": "opted_in"}
    assert store.erased_at("acme", "u1") == at(5).timestamp_us
    assert store.is_done("acme", "braze", "u1", "A")

    writes = {"u1": [Write("A", at(10), {NEWSLETTER: True}), Write("B", at(3), {PRODUCT: True})]}
    with store.claim("acme", "braze", writes) as claim:
        assert claim.done == {("u1", "A")}
        assert claim.erased == {("u1", "B")}
        assert claim.delivered == {"u1": {"email_subscribe": "opted_in"}}
        assert claim.current == {"u1": {NEWSLETTER: True}}
    # Folded into the person's record, the older keys are gone.
    assert not store.redis.exists(
        key("state", "acme", person), key("sent", "acme", "braze", person)
    )
    assert known_values(store, "acme", "u1") == {NEWSLETTER: True}
    assert store.erased_at("acme", "u1") == at(5).timestamp_us


def test_a_fresh_redis_never_reads_the_older_records(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True})
    store.redis.set(key("done", "acme", "braze", "B"), 1)  # no older release counted here
    assert store.older() == (False, False)
    assert not store.is_done("acme", "braze", "u1", "B")


def test_a_losing_merge_does_not_extend_the_state_it_lost_to(store):
    merge_one(store, "acme", "u1", "future", at(99), {NEWSLETTER: True})
    state = key("person", "acme", store.person("u1"))
    store.redis.expire(state, 100)
    assert merge_one(store, "acme", "u1", "old", at(10), {NEWSLETTER: False}) == set()
    assert store.redis.ttl(state) <= 100
    assert merge_one(store, "acme", "u1", "new", at(200), {PRODUCT: False}) == {PRODUCT}
    assert store.redis.ttl(state) > 100


def test_derived_fields_delivered_are_kept_per_connector_and_user(store):
    with store.claim("acme", "braze", {"u1": []}) as claim, store.redis.pipeline() as pipe:
        assert claim.delivered == {"u1": {}}
        store.finish(claim, {}, {"u1": {"email_subscribe": "opted_in", "g": "subscribed"}}, pipe)
        pipe.execute()
    with store.claim("acme", "braze", {"u1": [], "u2": []}) as claim:
        assert claim.delivered == {
            "u1": {"email_subscribe": "opted_in", "g": "subscribed"},
            "u2": {},
        }
    assert store.delivered("acme", "sendinblue", "u1") == {}
    assert 0 < store.redis.ttl(key("person", "acme", store.person("u1"))) <= 3600


def test_a_claim_returns_the_current_value_of_every_property(store):
    merge_one(store, "acme", "u1", "A", at(10), {NEWSLETTER: True, PRODUCT: True})
    with store.claim("acme", "braze", {"u1": [Write("B", at(20), {PRODUCT: False})]}) as claim:
        assert claim.current == {"u1": {NEWSLETTER: True, PRODUCT: False}}
        assert claim.owners == {"u1": {PRODUCT: "B"}}


def test_forget_drops_the_state_and_what_each_connector_was_told(store):
    writes = {"u1": [Write("A", at(10), {NEWSLETTER: True})]}
    with store.claim("acme", "braze", writes) as claim, store.redis.pipeline() as pipe:
        store.finish(claim, {"u1": ["A"]}, {"u1": {"email_subscribe": "opted_in"}}, pipe)
        pipe.execute()
    merge_one(store, "acme", "u2", "B", at(10), {NEWSLETTER: True})

    assert store.forget("acme", "u1", ["braze", "sendinblue"]) == 2

    assert store.known("acme", "u1") == {}
    assert store.delivered("acme", "braze", "u1") == {}
    assert known_values(store, "acme", "u2") == {NEWSLETTER: True}
    assert store.is_done("acme", "braze", "u1", "A")  # an event that ended is not re-sent
    with store.claim("acme", "braze", writes) as claim:
        assert claim.done == {("u1", "A")}


def test_finishing_with_nothing_done_only_releases(store):
    end(store, "acme", "braze", {"u1": []})
    assert lock_holder(store, "acme", "braze", "u1") is None
    with store.claim("acme", "braze", {"u1": []}) as claim:
        assert claim.delivered == {"u1": {}} and claim.owners == {"u1": {}}


def test_finish_marks_done_even_when_the_lock_was_taken_over_but_leaves_that_lock(store):
    store.lock_ttl_ms = 1
    writes = {"u1": [Write("A", at(10), {NEWSLETTER: True})]}
    with store.claim("acme", "braze", writes) as claim:
        time.sleep(0.01)  # ours expired; another worker takes it
        hold_elsewhere(store, "acme", "braze", "u1")
        with store.redis.pipeline() as pipe:
            store.finish(claim, {"u1": ["A"]}, {}, pipe)
            pipe.execute()
        claim.finished = True
    assert store.is_done("acme", "braze", "u1", "A")
    assert lock_holder(store, "acme", "braze", "u1") == "another-worker"


# -- locks ------------------------------------------------------------------------------------


def test_lock_admits_one_holder_at_a_time(store):
    inside, overlaps, refused = [], [], []

    def hold():
        with store.claim("acme", "braze", {"u1": []}) as claim:
            if claim.busy:
                refused.append(claim.busy)
                return
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.02)
            inside.pop()

    store.lock_wait = 5
    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
    assert refused == []  # every thread got its turn within the wait


def test_lock_held_elsewhere_reports_the_user_busy_after_a_short_wait(store):
    store.lock_wait = 0.1
    with store.claim("acme", "braze", {"u1": []}) as claim:
        assert claim.busy == set()
        started = time.monotonic()
        with store.claim("acme", "braze", {"u1": [], "u2": []}) as again:
            waited = time.monotonic() - started
            # Only the held user is busy; the other one is held by this block.
            assert again.busy == {"u1"}
            assert lock_holder(store, "acme", "braze", "u2") == again.token
        assert 0.1 <= waited < 1.0
        # Its lock was not taken over nor released by the block that did not get it.
        assert lock_holder(store, "acme", "braze", "u1") == claim.token
        # Other users and other connectors are not blocked.
        with (
            store.claim("acme", "braze", {"u2": []}) as other_user,
            store.claim("acme", "sendinblue", {"u1": []}) as other_connector,
            store.claim("globex", "braze", {"u1": []}) as other_tenant,
        ):
            assert other_user.busy == other_connector.busy == other_tenant.busy == set()


def test_a_busy_user_is_neither_checked_nor_merged(store):
    store.lock_wait = 0.05
    hold_elsewhere(store, "acme", "braze", "u1")
    writes = {"u1": [Write("A", at(10), {NEWSLETTER: True}), Write("B", at(20), {PRODUCT: True})]}
    with store.claim("acme", "braze", writes) as claim:
        assert claim.busy == {"u1"}
        assert claim.held == []
        assert claim.done == set()
        assert claim.owners == {}
    assert known_values(store, "acme", "u1") == {}


def test_locks_release_what_they_held_on_exit(store):
    with store.claim("acme", "braze", {"u1": [], "u2": []}) as claim:
        assert claim.busy == set()
        assert [lock_holder(store, "acme", "braze", u) for u in ("u1", "u2")] == [claim.token] * 2
        record = load_record(store.redis.get(key("person", "acme", store.person("u1"))))
        expires_ms = int(record["l"]["braze"][1])
        assert 0 < expires_ms - time.time() * 1000 <= 2000
    assert [lock_holder(store, "acme", "braze", u) for u in ("u1", "u2")] == [None, None]


def test_locks_release_what_they_held_when_the_body_raises(store):
    store.lock_wait = 0.05
    hold_elsewhere(store, "acme", "braze", "u2")
    with pytest.raises(RuntimeError), store.claim("acme", "braze", {"u1": [], "u2": []}) as claim:
        assert claim.busy == {"u2"}
        raise RuntimeError("boom")
    assert lock_holder(store, "acme", "braze", "u1") is None
    # The lock held elsewhere is left to its holder.
    assert lock_holder(store, "acme", "braze", "u2") == "another-worker"
    with store.claim("acme", "braze", {"u1": []}) as claim:
        assert claim.busy == set()


def test_locks_of_no_users_yield_nothing_busy(store):
    with store.claim("acme", "braze", {}) as claim:
        assert claim.busy == set()


def test_a_lock_left_by_a_killed_worker_expires(store):
    store.lock_ttl_ms = 100
    hold_elsewhere(store, "acme", "braze", "u1")  # never released: the worker was killed
    store.lock_ttl_ms = 2000
    store.lock_wait = 1
    with store.claim("acme", "braze", {"u1": []}) as claim:
        assert claim.busy == set()
        assert lock_holder(store, "acme", "braze", "u1") == claim.token


def test_untell_makes_the_event_owning_a_property_send_it_again(store):
    # Given an event told to the connector, with the fed field delivered,
    write = Write("A", at(10), {NEWSLETTER: True, PRODUCT: True})
    with store.claim("acme", "braze", {"u1": [write]}) as claim:
        with store.redis.pipeline() as pipe:
            store.finish(claim, {"u1": ["A"]}, {"u1": {"email_subscribe": "opted_in"}}, pipe)
            pipe.execute()
        claim.finished = True
    with store.claim("acme", "braze", {"u1": [write]}) as claim:
        assert claim.done == {("u1", "A")}
    # when the connector is made to forget it was told the newsletter and the field,
    store.untell("acme", "braze", "u1", [NEWSLETTER], ["email_subscribe"])
    # then the same event owns the newsletter again (not the product), the field is unknown,
    with store.claim("acme", "braze", {"u1": [write]}) as claim:
        assert claim.done == set()
        assert claim.owners == {"u1": {NEWSLETTER: "A"}}
        assert claim.delivered["u1"] == {"email_subscribe": None}
    # and the state itself is as it was.
    assert store.known("acme", "u1")[NEWSLETTER].event_key == "A"
