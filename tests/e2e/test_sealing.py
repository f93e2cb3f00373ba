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
    assert "BROKEN" in run_cli(new_only, "connectors", "list", "acme").stdout
    assert "BROKEN" not in run_cli(rotating, "connectors", "list", "acme").stdout

    done = run_cli(rotating, "connectors", "reencrypt")
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 config(s), 0 already under the first key" in done.stdout

    listed = run_cli(new_only, "connectors", "list", "acme")
    assert listed.returncode == 0 and "BROKEN" not in listed.stdout
    assert listed.stdout.count("\n") == 2
    old_only = run_cli(prefsync_env, "connectors", "list", "acme")
    assert old_only.stdout.count("BROKEN") == 2
    assert "sealed under a key that is not in PREFSYNC_SECRET_KEYS" in old_only.stdout
