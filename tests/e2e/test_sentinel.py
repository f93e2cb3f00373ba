"""A highly available Redis: with a sentinel:// URL the worker and the CLI find the master
through Redis Sentinel, for the queue and for prefsync's own data alike."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis

from tests.e2e.helpers import braze_config, consent_event, free_port, jsonl, wait_until


@pytest.fixture
def sentinel_url(redis_binary, redis_server, tmp_path):
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor prefsync 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(
        [redis_binary, str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        wait_until(lambda: _knows_master(probe), timeout=10)
        # A second, unreachable Sentinel first in the list: clients must move on to the next.
        yield f"sentinel://127.0.0.1:{free_port()};sentinel://127.0.0.1:{port}/0"
    finally:
        probe.close()
        proc.kill()
        proc.wait()


def _knows_master(probe: redis.Redis) -> bool:
    try:
        return bool(probe.execute_command("SENTINEL", "get-master-addr-by-name", "prefsync"))
    except redis.ConnectionError:
        return False


def test_worker_and_cli_reach_redis_through_sentinel(
    sentinel_url, redis_server, prefsync_env, fake_destinations, start_worker, run_cli
):
    env = {
        **prefsync_env,
        "PREFSYNC_REDIS_URL": sentinel_url,
        "PREFSYNC_REDIS_SENTINEL_MASTER": "prefsync",
    }
    put = run_cli(
        env, "connectors", "put", "acme", "-", input=json.dumps(braze_config(fake_destinations.url))
    )
    assert put.returncode == 0, put.stderr
    start_worker(env)
    event = consent_event("e-1", "u-1", "2026-11-20T09:00:00Z", {"newsletter": True})

    assert run_cli(env, "enqueue", "-", input=jsonl([event])).returncode == 0

    wait_until(lambda: fake_destinations.calls("braze"), timeout=20)
    # The data went to the master the Sentinel named: the one the test started.
    master = redis_server.client()
    assert any(k.startswith(b"prefsync:connectors:") for k in master.keys("prefsync:*"))
    assert "delivered\t1" in run_cli(env, "stats").stdout.splitlines()
