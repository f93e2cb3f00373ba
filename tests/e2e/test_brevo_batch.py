"""Brevo batches end to end: a real worker sends the contacts named by email in
``POST /v3/contacts/batch`` calls to the local Brevo look-alike, which answers as Brevo does
(all or nothing: a 404 naming the unknown contacts' indexes, a 400 for a bad item), and
each person ends as their own single update would have."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import BREVO_KEY, brevo_config, consent_event, jsonl, outcome_counts
from tests.processes import wait_until

AT = "2026-11-20T09:15:00.000Z"


def test_a_batch_with_unknown_and_refused_contacts_ends_each_person_on_their_own(
    tmp_path: Path, prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a Brevo connector without upsert, and a Brevo that knows 12 of the 16 contacts
    # named by email (u3, u7, u11, u15 are unknown) and the ext_id contact "crm-1",
    fake = fake_destinations
    fake.strict_contacts = True
    emails = [f"u{n}@example.com" for n in range(16)]
    unknown = {emails[n] for n in (3, 7, 11, 15)}
    for user in [*emails, "crm-1"]:
        if user not in unknown:
            fake.add_brevo_contact(user)
    # and refuses any update of u9 (say, an attribute of the wrong kind),
    fake.refuse_brevo_contact("u9@example.com", "Invalid attribute value")
    config = brevo_config(BREVO_KEY)
    config["upsert_mode"] = False
    path = tmp_path / "brevo.json"
    path.write_text(json.dumps(config))
    assert run_cli(prefsync_env, "connectors", "put", "acme", str(path)).returncode == 0
    check = run_cli(prefsync_env, "connectors", "check", "acme")
    assert "  delivery: contacts named by an email address: batches of up to 100 per POST " in (
        check.stdout
    )

    # When one opt-out each is enqueued (one message: one delivery),
    users = [*emails, "crm-1"]
    events = [
        consent_event(f"e{n}", user, AT, {"newsletter": False}) for n, user in enumerate(users)
    ]
    batch = tmp_path / "events.jsonl"
    batch.write_text(jsonl(events))
    start_worker(prefsync_env, concurrency=1)
    assert run_cli(prefsync_env, "enqueue", str(batch)).returncode == 0

    def ended() -> dict[str, int]:
        counts = outcome_counts(run_cli(prefsync_env, "stats", "--tenant", "acme").stdout)
        done = sum(counts.get(kind, 0) for kind in ("delivered", "skipped", "dead_lettered"))
        return counts if done >= len(users) else {}

    counts = wait_until(ended, timeout=30, message=lambda: fake.calls("brevo"))

    # Then the known contacts are updated in batch calls, each once, with the opt-out,
    calls = fake.calls("brevo")
    batches = [c for c in calls if c.path == "/v3/contacts/batch"]
    assert batches[0].status == 400  # u9's refusal: the call is split in halves
    # Each 404 named exactly the unknown contacts of its call, by their zero-based index.
    not_found = [c for c in batches if c.status == 404]
    assert not_found
    for call in not_found:
        named = [i for i, item in enumerate(call.body["contacts"]) if item["email"] in unknown]
        assert call.answer_body == {
            "code": "document_not_found",
            "message": f"No contact found for indexes {','.join(map(str, named))}",
        }
    updated = [item["email"] for c in batches if c.status == 204 for item in c.body["contacts"]] + [
        c.identifier for c in calls if c.method == "PUT" and c.status == 204
    ]
    known = [u for u in users if u not in unknown and u != "u9@example.com"]
    assert sorted(updated) == sorted(known)
    assert all(item["emailBlacklisted"] is True for c in batches for item in c.body["contacts"])
    # the ext_id contact in a PUT of its own (a batch cannot name it),
    assert [c.identifier for c in calls if c.method == "PUT" and "crm" in c.identifier] == ["crm-1"]
    # the unknown ones skipped, the refused one dead-lettered with Brevo's message, alone,
    assert counts == {
        "delivered": 12,
        "skipped": 4,
        "skipped:contact_unknown": 4,
        "dead_lettered": 1,
    }
    listed = run_cli(prefsync_env, "dlq", "list").stdout.splitlines()[:-1]
    assert len(listed) == 1
    _, tenant, connector, user, reason, _ = listed[0].split("\t")
    assert (tenant, connector, user) == ("acme", "sendinblue", "u9@example.com")
    assert reason.endswith(
        "Brevo refused the update (HTTP 400): invalid_parameter: Invalid attribute value"
    )
    # and nothing was created (upsert off) nor throttled.
    assert not [c for c in calls if c.method == "POST" and c.path == "/v3/contacts"]
    assert not [c for c in calls if c.status == 429]
