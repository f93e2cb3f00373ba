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
    assert b"jane@example.com" not in raw  # no person's id in any line
    audit = run_cli(prefsync_env, "audit", "acme", "--user", "jane@example.com", "--json")
    person = json.loads(audit.stdout.splitlines()[0])["user"]
    for key in (BRAZE_KEY, BREVO_KEY):
        assert key.encode() not in raw
        assert key[-12:].encode() not in raw  # not even most of it
    lines = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    by_message = {line["event"]: line for line in lines}
    for message in ("retry scheduled", "delivered", "dead-lettered"):
        line = by_message[message]
        assert all(line.get(field) for field in CONTEXT), (message, line)
        # PREFSYNC_LOG_USER_IDS=hash (the default): the keyed hash `audit --user` shows.
        assert line["tenant"] == "acme" and line["user"] == person
    assert by_message["retry scheduled"]["connector_id"] == "braze"
    assert by_message["delivered"]["attempt"] == 2
    assert by_message["dead-lettered"]["connector_id"] == "sendinblue"
    assert by_message["dead-lettered"]["level"] == "error"  # bad credentials: an operator acts
    assert any(line.get("logger", "").startswith("celery") for line in lines)


def test_with_plain_user_ids_a_developer_sees_them_and_with_omit_nobody_does(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    put = run_cli(
        prefsync_env,
        "connectors",
        "put",
        "acme",
        "-",
        input=json.dumps(braze_config(fake_destinations.url)),
    )
    assert put.returncode == 0, put.stderr
    plain = start_worker(prefsync_env, extra_env={"PREFSYNC_LOG_USER_IDS": "plain"})
    event = consent_event("e-1", "jane@example.com", "2026-11-20T09:00:00Z", {"newsletter": True})
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl([event])).returncode == 0
    wait_until(lambda: '"delivered"' in plain.log())
    plain.stop()
    assert '"user": "jane@example.com"' in plain.log()

    omit = start_worker(prefsync_env, extra_env={"PREFSYNC_LOG_USER_IDS": "omit"})
    later = consent_event("e-2", "jane@example.com", "2026-11-20T10:00:00Z", {"newsletter": False})
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl([later])).returncode == 0
    wait_until(lambda: '"delivered"' in omit.log())
    omit.stop()
    delivered = [json.loads(line) for line in omit.log().splitlines() if '"delivered"' in line]
    assert delivered and all("user" not in line for line in delivered)
    assert "jane@example.com" not in omit.log()
