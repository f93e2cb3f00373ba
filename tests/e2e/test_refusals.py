"""A stored refusal acts, end to end: a real ingress, worker and Redis, the fake PMP,
Braze and Brevo. A Brevo unsubscribe becomes one PMP consent event and Braze's refusal,
and nothing goes back to Brevo."""

from __future__ import annotations

import json
import time

import redis

from tests.e2e.helpers import consent_event, example
from tests.e2e.test_signals import INBOX, signal, two_way_tenant

JANE = "jane.doe@example.com"


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := check():
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_brevo_unsubscribe_tells_the_pmp_once_and_braze_not_brevo(
    tmp_path, prefsync_env, fake_destinations, redis_server, start_ingress, start_worker, run_cli
):
    # Given acme's two-way connectors, jane opted in, a worker and an ingress,
    fake = fake_destinations
    auth = two_way_tenant(run_cli, prefsync_env, tmp_path, fake)
    start_worker(prefsync_env)
    ingress = start_ingress(prefsync_env)
    opted_in = consent_event("e1", JANE, "2026-12-01T10:00:00.000Z", {"newsletter": True})
    done = run_cli(prefsync_env, "enqueue", "-", input=json.dumps(opted_in))
    assert done.returncode == 0, done.stderr
    wait_for(lambda: fake.calls("braze"))
    brevo_before = len(fake.calls("brevo"))
    fake.fail_next("pmp", 1, status=503)

    # when Brevo reports her unsubscribe (twice),
    body = example("signals", "brevo-unsubscribed.json")
    assert signal(ingress.url, "brevo-main", body, auth).status_code == 202
    assert signal(ingress.url, "brevo-main", body, auth).json()["duplicates"] == 1

    # the PMP gets one consent event (after a 503), prefsync's, newsletter refused,
    [event] = wait_for(lambda: fake.pmp_events, timeout=60)
    assert event["user"]["organization_user_id"] == JANE
    assert event["consents"]["purposes"] == [{"id": "newsletter", "enabled": False}]
    assert event["delegate"]["id"] == "prefsync"
    assert event["delegate"]["metadata"] == {"connector": "brevo-main", "signal": "unsubscribed"}
    # Braze is told the refusal and Brevo, which holds it, nothing.
    last = wait_for(
        lambda: [c for c in fake.calls("braze") if "unsubscribed" in json.dumps(c.body)]
    )
    assert last
    client = redis.Redis.from_url(redis_server.url)
    wait_for(lambda: client.llen(INBOX) == 0 and client.llen("prefsync:signals:processing") == 0)
    time.sleep(3)
    assert len(fake.pmp_events) == 1
    # The origin (its key) is told nothing; acme's other Brevo connector is.
    origin = [c for c in fake.calls("brevo")[brevo_before:] if "e2e-signals" in str(c.headers)]
    assert origin == []
