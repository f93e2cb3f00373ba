"""What Brevo's API refuses is never sent: a contact addressed by an email Brevo would not
take as one is updated if Brevo knows it, never created; the change ends as a dead letter
saying why after that one call, not after a create refused five times."""

from __future__ import annotations

import json

from tests.e2e.helpers import BREVO_KEY, brevo_config, consent_event, jsonl, wait_until


def test_an_upsert_with_an_email_brevo_refuses_is_dead_lettered_without_a_create(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a Brevo connector that creates unknown contacts, and a Brevo that knows nobody,
    fake = fake_destinations
    fake.strict_contacts = True
    put = run_cli(
        prefsync_env, "connectors", "put", "acme", "-", input=json.dumps(brevo_config(BREVO_KEY))
    )
    assert put.returncode == 0, put.stderr
    start_worker(prefsync_env)

    # when people whose ids are not emails by Brevo's rule refuse the newsletter,
    refused = ["jane@exa_mple.com", "jane..doe@example.com"]
    events = [
        consent_event(f"ev-{n}", user, "2026-11-20T09:00:00Z", {"newsletter": False})
        for n, user in enumerate(refused)
    ]
    assert run_cli(prefsync_env, "enqueue", "-", input=jsonl(events)).returncode == 0

    # then each is dead-lettered with the reason, after its update and nothing else:
    def dead_letters() -> list[str]:
        return run_cli(prefsync_env, "dlq", "list").stdout.splitlines()[:-1]

    listed = wait_until(lambda: len(dead_letters()) == 2 and dead_letters(), timeout=20)
    for line in listed:
        assert "not created in Brevo" in line
        assert "not an email by the rule of Brevo's API" in line
    # Their updates (one batch call naming both, or a PUT each), each answered 404; no create.
    calls = fake.calls("brevo")
    updates = [c for c in calls if c.method == "PUT" or c.path == "/v3/contacts/batch"]
    assert updates == calls and calls and all(c.status == 404 for c in calls)
    assert not any(c.path == "/v3/contacts" for c in calls)
