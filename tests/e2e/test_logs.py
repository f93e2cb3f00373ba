"""What operators read: the worker's log of a delivery, a retry and a dead letter is JSON
lines carrying the task's context, and never holds a credential."""

from __future__ import annotations

import json

from tests.e2e.helpers import (
    BRAZE_KEY,
    BREVO_KEY,
    braze_config,
    brevo_config,
    consent_event,
    jsonl,
    wait_until,
)

CONTEXT = ("task_id", "tenant", "connector_id", "event_key", "user", "attempt")


def test_worker_log_is_json_with_task_context_and_no_credential(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    for config in (braze_config(fake.url), brevo_config()):
        put = run_cli(prefsync_env, "connectors", "put", "acme", "-", input=json.dumps(config))
        assert put.returncode == 0, put.stderr
    # Braze: a retry, then success. Brevo: a refusal that dead-letters at once, with an
    # answer that echoes the key back (some APIs do).
    fake.fail_next("braze", 1, status=503)
    fake.fail_next(
        "brevo",
        1,
        status=401,
        body={"code": "unauthorized", "message": f"Key {BREVO_KEY} not found"},
    )
    worker = start_worker(prefsync_env)
    event = consent_event("e-1", "jane@example.com", "2026-11-20T09:00:00Z", {"newsletter": True})
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl([event])).returncode == 0

    wait_until(lambda: '"delivered"' in worker.log() and '"dead-lettered"' in worker.log())
    worker.stop()

    raw = worker.log_path.read_bytes()
    for key in (BRAZE_KEY, BREVO_KEY):
        assert key.encode() not in raw
        assert key[-12:].encode() not in raw  # not even most of it
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    by_message = {line["event"]: line for line in lines}
    for message in ("retry scheduled", "delivered", "dead-lettered"):
        line = by_message[message]
        assert all(line.get(field) for field in CONTEXT), (message, line)
        assert line["tenant"] == "acme" and line["user"] == "jane@example.com"
    assert by_message["retry scheduled"]["connector_id"] == "braze"
    assert by_message["delivered"]["attempt"] == 2
    assert by_message["dead-lettered"]["connector_id"] == "sendinblue"
    assert by_message["dead-lettered"]["level"] == "error"  # bad credentials: an operator acts
    assert any(line.get("logger", "").startswith("celery") for line in lines)
