"""What Flower shows of a task: its message's argsrepr/kwargsrepr. Enqueued for real (no
worker running, so the message waits in Redis as Flower would see it), it names counts,
types, tenants and consent event ids, and no person."""

from __future__ import annotations

import base64
import json

from tests.e2e.helpers import consent_event, jsonl

PEOPLE = ["alice@example.com", "bob@example.com"]


def test_a_task_as_flower_shows_it_carries_no_user_id(prefsync_env, redis_server, run_cli):
    events = [
        consent_event(f"ev-{n}", person, "2026-11-20T09:00:00Z", {"newsletter": True})
        for n, person in enumerate(PEOPLE)
    ]
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl(events)).returncode == 0

    (raw,) = redis_server.client().lrange("celery", 0, -1)
    message = json.loads(raw)
    headers = message["headers"]
    shown = json.loads(headers["argsrepr"])
    assert shown == {
        "events": 2,
        "types": {"event.created": 2},
        "tenants": ["acme"],
        "event_ids": ["ev-0", "ev-1"],
    }
    assert headers["kwargsrepr"] == "{}"
    assert not any(person in headers["argsrepr"] + headers["kwargsrepr"] for person in PEOPLE)
    # The events themselves still travel in the body, for the worker.
    assert PEOPLE[0] in base64.b64decode(message["body"]).decode()
