"""The dead-letter store (worker.records.deadletter): compact entries, per-tenant count and
bytes, an
error past a threshold, and listing a page at a time (fakeredis)."""

from __future__ import annotations

import json

import fakeredis
import pytest
import structlog

from worker.records.deadletter import ENTRIES, ORDER, DeadLetterStore, _decode, replay


def add(store: DeadLetterStore, n: int, tenant: str = "acme", at: float = 1.0, payload=None):
    return store.add(
        tenant=tenant,
        connector_id="braze",
        user=f"u-{n}",
        event_key=f"event.created:{n}:t",
        payload=payload if payload is not None else {"n": n},
        attempts=[],
        reason="refused",
        dead_lettered_at=at,
    )


@pytest.fixture
def store() -> DeadLetterStore:
    return DeadLetterStore(fakeredis.FakeRedis(), warn_count=20)


def test_a_large_payload_is_stored_compressed_and_reads_back_whole(store):
    payload = {"consents": [{"id": f"purpose-{n}", "enabled": True} for n in range(500)]}
    entry = add(store, 1, payload=payload)

    raw = store.redis.hget(ENTRIES, entry.id)
    assert len(raw) < len(json.dumps(payload)) / 5
    assert store.get(entry.id).payload == payload


def test_an_entry_of_an_older_release_still_reads(store):
    entry = add(store, 1)
    older = json.dumps(entry.model_dump(), indent=2)  # pretty JSON, as stored before
    assert _decode(older.encode()) == entry


def test_count_and_bytes_are_kept_per_tenant_as_entries_come_and_go(store):
    first = add(store, 1)
    add(store, 2)
    add(store, 3, tenant="beta")
    kept = store.kept()
    assert kept["acme"][0] == 2 and kept["beta"][0] == 1
    assert kept["acme"][1] == sum(
        len(store.redis.hget(ENTRIES, e.id)) for e in store.list(tenant="acme")
    )

    store.remove(first.id)
    store.remove(first.id)  # twice: counted once

    assert store.kept()["acme"][0] == 1
    assert store.kept()["acme"][1] == len(store.redis.hget(ENTRIES, store.list("acme")[0].id))


def test_past_the_threshold_an_error_is_logged_then_every_tenth_more(store):
    with structlog.testing.capture_logs() as logs:
        for n in range(26):
            add(store, n)
    errors = [line for line in logs if line["log_level"] == "error"]
    assert [line["dead_letters"] for line in errors] == [20, 22, 24, 26][: len(errors)]
    assert len(errors) == 4
    assert all(line["operator_action"] and line["tenant"] == "acme" for line in errors)


def test_listing_reads_pages_and_sees_every_entry_once_even_with_equal_times(store):
    for n in range(1203):
        add(store, n, at=float(n // 600))  # runs of 600 entries kept at the same time
    seen = [entry.user for entry in store.iter()]
    assert sorted(seen) == sorted(f"u-{n}" for n in range(1203))
    assert [e.user for e in store.iter(tenant="nobody")] == []


def test_a_replay_removing_entries_as_it_goes_replays_each_once(store):
    for n in range(1100):
        add(store, n, at=float(n))
    replayed: list[str] = []

    done, failed = replay(store, store.iter(), lambda entry: replayed.append(entry.user) or "t")

    assert len(done) == 1100 and failed == []
    assert sorted(replayed) == sorted(f"u-{n}" for n in range(1100))
    assert store.redis.zcard(ORDER) == 0
    assert store.kept() == {}
