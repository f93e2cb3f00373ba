"""Connector keys sealed at rest, end to end: after `prefsync connectors put`, no key is in any
Redis value or in the append-only file; deliveries use the right key; `reencrypt` rotates.
Real Redis (AOF on, fsync always), real worker and CLI, the local Braze/Brevo look-alike."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.e2e.conftest import SEALING_KEY, dump
from tests.e2e.helpers import (
    BRAZE_KEY,
    BREVO_KEY,
    braze_attributes,
    braze_config,
    brevo_config,
    consent_event,
    jsonl,
    wait_until,
)

KEY_TEXT = re.compile(rb"test-key-[0-9]{4}")


def on_disk(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in directory.rglob("*") if path.is_file())


def test_no_connector_key_in_redis_or_its_aof_and_deliveries_use_the_right_key(
    prefsync_env, redis_server, fake_destinations, start_worker, run_cli
):
    redis_server.stop()
    redis_server.start(["--appendonly", "yes", "--appendfsync", "always"])
    for config in (braze_config(fake_destinations.url), brevo_config()):
        put = run_cli(prefsync_env, "connectors", "put", "acme", "-", input=json.dumps(config))
        assert put.returncode == 0, put.stderr

    assert KEY_TEXT.search(dump(redis_server)) is None
    assert KEY_TEXT.search(on_disk(redis_server.directory)) is None
    assert b"appendonly" in b"".join(p.name.encode() for p in redis_server.directory.rglob("*"))

    start_worker(prefsync_env)
    event = consent_event("e1", "u-1", "2026-11-20T09:00:00Z", {"newsletter": True})
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl([event])).returncode == 0
    wait_until(lambda: braze_attributes(fake_destinations.calls("braze")), timeout=10)
    wait_until(lambda: fake_destinations.calls("brevo"), timeout=10)
    (braze_call,) = fake_destinations.calls("braze")
    assert braze_call.headers["authorization"] == f"Bearer {BRAZE_KEY}"
    assert fake_destinations.calls("brevo")[0].headers["api-key"] == BREVO_KEY
    assert KEY_TEXT.search(on_disk(redis_server.directory)) is None


def test_reencrypt_moves_every_config_to_the_new_key_and_the_old_one_can_go(
    prefsync_env, fake_destinations, run_cli
):
    for config in (braze_config(fake_destinations.url), brevo_config()):
        put = run_cli(prefsync_env, "connectors", "put", "acme", "-", input=json.dumps(config))
        assert put.returncode == 0, put.stderr
    new_key = run_cli(prefsync_env, "connectors", "new-key").stdout.strip()
    rotating = {**prefsync_env, "PREFSYNC_SECRET_KEYS": f"{new_key},{SEALING_KEY}"}
    new_only = {**prefsync_env, "PREFSYNC_SECRET_KEYS": new_key}

    # Before: the new key alone cannot open them; the two together can.
    assert "INVALID" in run_cli(new_only, "connectors", "list", "acme").stdout
    assert "INVALID" not in run_cli(rotating, "connectors", "list", "acme").stdout

    done = run_cli(rotating, "connectors", "reencrypt")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 config(s), 0 already under the first key" in done.stdout

    listed = run_cli(new_only, "connectors", "list", "acme")
    assert listed.returncode == 0 and "INVALID" not in listed.stdout
    assert listed.stdout.count("\n") == 2
    old_only = run_cli(prefsync_env, "connectors", "list", "acme")
    assert old_only.stdout.count("INVALID") == 2
    assert "sealed under a key that is not in PREFSYNC_SECRET_KEYS" in old_only.stdout


def test_a_config_moved_to_another_tenant_or_stored_plain_is_refused_never_used(
    prefsync_env, redis_server, fake_destinations, start_worker, run_cli
):
    globex_key = "braze-globex-test-key-0003"
    for tenant, key in (("acme", BRAZE_KEY), ("globex", globex_key)):
        config = json.dumps(braze_config(fake_destinations.url, key=key))
        put = run_cli(prefsync_env, "connectors", "put", tenant, "-", input=config)
        assert put.returncode == 0, put.stderr
    client = redis_server.client()
    # Someone with write access to Redis copies globex's sealed config into acme's hash,
    # and stores a plain config (keys and all) for initech.
    client.hset(
        "prefsync:connectors:acme", "braze", client.hget("prefsync:connectors:globex", "braze")
    )
    plain = braze_config(fake_destinations.url, key="braze-initech-test-key-0004")
    client.hset("prefsync:connectors:initech", "braze", json.dumps({**plain, "id": "braze"}))

    listed = run_cli(prefsync_env, "connectors", "list", "acme")
    assert "INVALID" in listed.stdout and "for another tenant or connector" in listed.stdout
    listed = run_cli(prefsync_env, "connectors", "list", "initech")
    assert "INVALID" in listed.stdout and "prefsync connectors reencrypt" in listed.stdout

    start_worker(prefsync_env)
    events = [
        consent_event("e1", "u-1", "2026-11-20T09:00:00Z", {"newsletter": True}, tenant=tenant)
        for tenant in ("acme", "initech")
    ]
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl(events)).returncode == 0

    def dead_letters() -> list[str]:
        return run_cli(prefsync_env, "dlq", "list").stdout.splitlines()[:-1]

    wait_until(lambda: len(dead_letters()) == 2, timeout=15, message=dead_letters)
    dead = dead_letters()
    assert fake_destinations.calls("braze") == []
    assert globex_key not in "\n".join(dead)
    assert "for another tenant or connector" in "\n".join(dead)

    # reencrypt seals the plain one for its place; the moved one stays refused, named.
    done = run_cli(prefsync_env, "connectors", "reencrypt")
    assert done.returncode != 0
    assert "tenant 'acme', connector 'braze'" in done.stderr
    listed = run_cli(prefsync_env, "connectors", "list", "initech")
    assert listed.returncode == 0 and "INVALID" not in listed.stdout
    assert b"initech-test-key" not in dump(redis_server)
