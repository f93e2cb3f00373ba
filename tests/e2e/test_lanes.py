"""Lanes end to end: a live opt-out is not kept behind a bulk load (worker.queue.lanes,
worker.records.feeder). Real Redis, one real worker consuming every queue, the local Braze
look-alike answering each call after a delay, so the bulk load takes seconds."""

from __future__ import annotations

import json

from tests.e2e.helpers import braze_attributes, braze_config, consent_event, jsonl, wait_until
from tests.e2e.test_redis_acl import acl_redis, env_of  # noqa: F401 (a fixture)

BULK_EVENTS = 2_000  # 40 Braze calls of 50 users, 0.1 s each: 2 s or more for 2 processes


def put_braze(run_cli, env, url: str) -> None:
    put = run_cli(env, "connectors", "put", "acme", "-", input=json.dumps(braze_config(url)))
    assert put.returncode == 0, put.stderr


def opt_ins(prefix: str, count: int) -> list[dict]:
    """``count`` newsletter opt-ins of as many people, ``prefix-N``."""
    return [
        consent_event(
            f"{prefix}-e{n}", f"{prefix}-{n}", "2026-11-20T09:00:00Z", {"newsletter": True}
        )
        for n in range(count)
    ]


def enqueue_bulk(run_cli, env, events: list[dict]) -> None:
    loaded = run_cli(env, "enqueue", "--bulk", "-", input=jsonl(events))
    assert loaded.returncode == 0, loaded.stderr


def test_a_live_opt_out_is_delivered_while_a_bulk_load_is_still_queued(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_braze(run_cli, prefsync_env, fake.url)
    fake.set_delay("braze", 0.1)
    enqueue_bulk(run_cli, prefsync_env, opt_ins("bulk", BULK_EVENTS))
    start_worker(prefsync_env, concurrency=2)

    def delivered() -> list[str]:
        return [obj["external_id"] for obj in braze_attributes(fake.calls("braze"))]

    wait_until(lambda: delivered(), timeout=20, message="the bulk load did not start")
    opt_out = consent_event("live-1", "live-person", "2026-11-20T10:00:00Z", {"newsletter": False})
    sent = run_cli(prefsync_env, "enqueue", "-", input=jsonl([opt_out]))
    assert sent.returncode == 0, sent.stderr

    wait_until(lambda: "live-person" in delivered(), timeout=20)
    before = delivered().index("live-person")
    assert before < BULK_EVENTS / 2, f"{before} bulk events were delivered before it"
    # The bulk load goes on, and ends, behind it.
    wait_until(lambda: len(delivered()) == BULK_EVENTS + 1, timeout=30)


def test_a_bulk_load_goes_through_with_the_producers_and_the_workers_redis_users(
    acl_redis,  # noqa: F811 (the fixture imported above)
    prefsync_env,
    fake_destinations,
    start_worker,
    run_cli,
):
    # The producer parks the load (its Redis user may write prefsync:bulk:*); the worker's
    # feeder feeds it to the bulk lane (worker.infra.redis_acl).
    put_braze(run_cli, env_of(prefsync_env, acl_redis, "admin"), fake_destinations.url)
    worker = start_worker(env_of(prefsync_env, acl_redis, "worker"))
    enqueue_bulk(run_cli, env_of(prefsync_env, acl_redis, "producer"), opt_ins("u", 3))

    wait_until(lambda: len(braze_attributes(fake_destinations.calls("braze"))) == 3, timeout=15)
    assert "NOPERM" not in worker.log()


def test_no_tenant_id_breaks_the_bulk_lane_for_the_others(
    prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    """Tenant ids that once named the feeder's own keys (or would run into another key's
    name) each get their bulk load delivered, and so does every tenant after them."""
    tenants = ["tenants", "turn", "feeder", "a:b*{c} d", "acme"]
    for tenant in tenants:
        config = json.dumps(braze_config(fake_destinations.url))
        done = run_cli(prefsync_env, "connectors", "put", tenant, "-", input=config)
        assert done.returncode == 0, done.stderr
    start_worker(prefsync_env)

    for tenant in tenants:
        events = [
            consent_event(
                f"{tenant}-{n}",
                f"{tenant}-u{n}",
                "2026-11-16T09:00:00Z",
                {"newsletter": True},
                tenant=tenant,
            )
            for n in range(2)
        ]
        enqueue_bulk(run_cli, prefsync_env, events)

    expected = {f"{tenant}-u{n}" for tenant in tenants for n in range(2)}
    wait_until(
        lambda: (
            {o["external_id"] for o in braze_attributes(fake_destinations.calls("braze"))}
            == expected
        ),
        timeout=30,
    )
    assert redis_server.client().type("prefsync:bulk:tenants") in (b"zset", b"none")
