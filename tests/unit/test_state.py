"""Newest-wins state, idempotency markers and the per-user lock (fakeredis + Lua)."""

import threading
import time

import fakeredis
import pytest

from worker.errors import Deferred
from worker.events import OrderingKey
from worker.state import StateStore, UserBusy, key

NEWSLETTER = "consents_purposes_newsletter_enabled"
PRODUCT = "consents_purposes_product_enabled"


@pytest.fixture
def store() -> StateStore:
    return StateStore(
        fakeredis.FakeRedis(), state_ttl=3600, idempotency_ttl=60, lock_ttl=2, lock_wait=0.2
    )


def at(seconds: int, version: int | None = None) -> OrderingKey:
    return OrderingKey(timestamp_us=seconds * 1_000_000, version=version)


def test_first_event_owns_every_property_it_sets(store):
    owned = store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True, PRODUCT: False})
    assert owned == {NEWSLETTER, PRODUCT}
    assert store.current("acme", "u1") == {NEWSLETTER: True, PRODUCT: False}


def test_older_event_does_not_overwrite_a_newer_value_but_keeps_its_other_fields(store):
    store.merge("acme", "u1", "B", at(20), {NEWSLETTER: False})
    owned = store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True, PRODUCT: True})
    assert owned == {PRODUCT}
    assert store.current("acme", "u1") == {NEWSLETTER: False, PRODUCT: True}


def test_newer_event_takes_over_and_the_older_one_no_longer_owns_it(store):
    store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True})
    assert store.merge("acme", "u1", "B", at(20), {NEWSLETTER: False}) == {NEWSLETTER}
    # A retry of A after B merged: A owns nothing any more.
    assert store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True}) == set()
    assert store.current("acme", "u1") == {NEWSLETTER: False}


def test_the_same_event_merged_again_still_owns_its_values(store):
    store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True})
    assert store.merge("acme", "u1", "A", at(10), {NEWSLETTER: True}) == {NEWSLETTER}


def test_between_user_payloads_the_higher_version_wins_even_with_an_older_timestamp(store):
    store.merge("acme", "u1", "v5", at(10, version=5), {NEWSLETTER: False})
    assert store.merge("acme", "u1", "v4", at(99, version=4), {NEWSLETTER: True}) == set()
    assert store.current("acme", "u1") == {NEWSLETTER: False}


def test_without_versions_on_both_sides_the_later_timestamp_wins(store):
    store.merge("acme", "u1", "user", at(10, version=7), {NEWSLETTER: False})
    assert store.merge("acme", "u1", "consent", at(11), {NEWSLETTER: True}) == {NEWSLETTER}


def test_an_exact_tie_keeps_the_value_already_recorded(store):
    store.merge("acme", "u1", "A", at(10), {NEWSLETTER: False})
    assert store.merge("acme", "u1", "B", at(10), {NEWSLETTER: True}) == set()
    assert store.current("acme", "u1") == {NEWSLETTER: False}


def test_string_values_with_tabs_and_event_keys_with_tabs_survive(store):
    owned = store.merge("acme", "u1", "key\twith\ttabs", at(10), {"p": "weekly\tdaily"})
    assert owned == {"p"}
    assert store.current("acme", "u1") == {"p": "weekly\tdaily"}
    assert store.merge("acme", "u1", "key\twith\ttabs", at(10), {"p": "weekly\tdaily"}) == {"p"}


def test_tenants_and_users_with_separators_never_share_state(store):
    store.merge("a:b", "c", "A", at(10), {NEWSLETTER: True})
    store.merge("a", "b:c", "B", at(5), {NEWSLETTER: False})
    assert store.current("a:b", "c") == {NEWSLETTER: True}
    assert store.current("a", "b:c") == {NEWSLETTER: False}


def test_done_markers_are_per_connector_and_expire(store):
    store.mark_done("acme", "braze", "A")
    assert store.is_done("acme", "braze", "A")
    assert not store.is_done("acme", "sendinblue", "A")
    assert not store.is_done("other", "braze", "A")
    ttl = store.redis.ttl(next(iter(store.redis.scan_iter("prefsync:done:*"))))
    assert 0 < ttl <= 60


def test_lock_admits_one_holder_at_a_time(store):
    inside, overlaps = [], []

    def hold():
        with store.lock("acme", "braze", "u1"):
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


def test_lock_held_elsewhere_defers_the_delivery_after_a_short_wait(store):
    with (
        store.lock("acme", "braze", "u1"),
        pytest.raises(UserBusy) as busy,
        store.lock("acme", "braze", "u1"),
    ):
        pass
    assert isinstance(busy.value, Deferred)  # not a failure: it uses no retry
    assert busy.value.wait > 0
    # Other users and other connectors are not blocked.
    with (
        store.lock("acme", "braze", "u1"),
        store.lock("acme", "braze", "u2"),
        store.lock("acme", "sendinblue", "u1"),
    ):
        pass


def test_a_lock_left_by_a_killed_worker_expires(store):
    store.lock_ttl_ms = 100
    store.redis.set(key("lock", "acme", "braze", "u1"), "dead-worker", px=100)
    store.lock_wait = 1
    with store.lock("acme", "braze", "u1"):
        pass
