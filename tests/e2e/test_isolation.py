"""Tenant isolation end to end: two tenants whose user ids, event ids and connector ids all
collide are delivered each with its own connector and key, keep separate newest-wins state
and idempotency markers, and ``dlq replay --tenant`` touches only the tenant it names."""

from __future__ import annotations

import json

from tests.e2e.helpers import BRAZE_KEY, braze_config, consent_event, wait_until
from tests.e2e.test_guarantee import dead_letters, enqueue

OTHER_KEY = "braze-globex-test-key-0004"
USER = "jane"  # a user id both tenants use, for different people


def put_connectors(run_cli, env, fake) -> None:
    for tenant, key in (("acme", BRAZE_KEY), ("globex", OTHER_KEY)):
        config = json.dumps(braze_config(fake.url, key=key))  # both named "braze"
        put = run_cli(env, "connectors", "put", tenant, "-", input=config)
        assert put.returncode == 0, put.stderr


def sent_by(fake, key: str, status: int = 201) -> list[dict]:
    """The attribute objects Braze accepted under ``key``, in order."""
    return [
        obj
        for call in fake.calls("braze")
        if call.status == status and call.headers.get("authorization") == f"Bearer {key}"
        for obj in call.body["attributes"]
    ]


def same_event(tenant: str, updated_at: str, newsletter: bool) -> dict:
    # The same event id for both tenants: idempotency markers must not collide either.
    return consent_event("e-shared", USER, updated_at, {"newsletter": newsletter}, tenant=tenant)


def test_colliding_tenants_are_delivered_each_with_its_own_connector_and_state(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env, concurrency=2)
    # acme's event is the newer one: were state shared, globex's would be skipped as stale.
    enqueue(run_cli, prefsync_env, [same_event("acme", "2026-11-20T10:00:00Z", False)])
    wait_until(lambda: sent_by(fake, BRAZE_KEY), timeout=20)
    enqueue(run_cli, prefsync_env, [same_event("globex", "2026-11-20T09:00:00Z", True)])
    wait_until(lambda: sent_by(fake, OTHER_KEY), timeout=20)

    assert [o["external_id"] for o in sent_by(fake, BRAZE_KEY)] == [USER]
    assert [o["external_id"] for o in sent_by(fake, OTHER_KEY)] == [USER]
    assert sent_by(fake, BRAZE_KEY)[0]["email_subscribe"] == "unsubscribed"
    assert sent_by(fake, OTHER_KEY)[0]["email_subscribe"] == "opted_in"
    assert len(fake.calls("braze")) == 2


def test_dlq_replay_of_one_tenant_delivers_and_removes_only_that_tenants_entries(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    fake.outage("braze", 503)
    start_worker(prefsync_env, concurrency=2)
    enqueue(
        run_cli,
        prefsync_env,
        [
            same_event("acme", "2026-11-20T10:00:00Z", False),
            same_event("globex", "2026-11-20T10:00:00Z", True),
        ],
    )
    wait_until(lambda: len(dead_letters(run_cli, prefsync_env)) == 2, timeout=30)
    fake.recover("braze")

    replay = run_cli(prefsync_env, "dlq", "replay", "--tenant", "acme")
    assert replay.returncode == 0, replay.stderr

    wait_until(lambda: sent_by(fake, BRAZE_KEY), timeout=20)
    [left] = dead_letters(run_cli, prefsync_env)
    assert left.split("\t")[1] == "globex"
    assert sent_by(fake, OTHER_KEY) == []
    assert [o["email_subscribe"] for o in sent_by(fake, BRAZE_KEY)] == ["unsubscribed"]
