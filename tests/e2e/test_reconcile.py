"""`prefsync reconcile` end to end: a real worker delivers people to the fake Braze and
Brevo, which keep what they were told; profiles are then edited behind prefsync's back,
and reconcile lists exactly those people and fields, by the tools' own names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import redis

from tests.e2e.helpers import BREVO_KEY, braze_config, example, jsonl, outcome_counts
from tests.processes import wait_until
from worker.records.signals import INBOX

AT = "2026-11-20T09:15:00.000Z"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
BRAZE_PEOPLE = [f"bz-{n}" for n in range(5)]
BREVO_PEOPLE = [f"u{n}@example.com" for n in range(4)]
PMP_KEY, PMP_SECRET = "didomi-key-e2e-0123456789", "didomi-secret-e2e-0123456789"


def event(event_id: str, user: str) -> dict[str, Any]:
    """Opted in to the newsletter (weekly) and to product updates."""
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "organization_id": "acme",
                "created_at": AT,
                "updated_at": AT,
                "status": "confirmed",
                "user": {"id": f"pmp-{user}", "organization_user_id": user},
                "consents": {
                    "purposes": [
                        {
                            "id": "newsletter",
                            "enabled": True,
                            "values": {"frequency": {"value": "weekly"}},
                        },
                        {"id": "product_updates", "enabled": True},
                    ]
                },
            }
        },
    }


def test_reconcile_lists_exactly_the_edited_people_and_fields(
    tmp_path: Path, prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a Braze connector (one-way) and a Brevo connector that listens (bidirectional),
    fake = fake_destinations
    pmp = {**example("pmp", "didomi.json"), "api_key": PMP_KEY, "api_secret": PMP_SECRET}
    pmp["api_url"] = f"{fake.url}/pmp/v1"
    (tmp_path / "pmp.json").write_text(json.dumps(pmp))
    assert run_cli(prefsync_env, "pmp", "put", "acme", str(tmp_path / "pmp.json")).returncode == 0
    brevo = example("connectors", "sendinblue-bidirectional.json")
    brevo["authentication"] = {"private_api_key": BREVO_KEY}
    for name, config in (("braze", braze_config(fake.url)), ("brevo", brevo)):
        config["id"] = name
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        assert run_cli(prefsync_env, "connectors", "put", "acme", str(path)).returncode == 0
    # and every person delivered to both tools,
    people = BRAZE_PEOPLE + BREVO_PEOPLE
    events = tmp_path / "events.jsonl"
    events.write_text(jsonl([event(f"e{n}", user) for n, user in enumerate(people)]))
    start_worker(prefsync_env, concurrency=1)
    assert run_cli(prefsync_env, "enqueue", str(events)).returncode == 0

    def delivered() -> dict[str, int]:
        counts = outcome_counts(run_cli(prefsync_env, "stats", "--tenant", "acme").stdout)
        return counts if counts.get("delivered", 0) >= 2 * len(people) else {}

    wait_until(delivered, timeout=30, message=lambda: fake.calls())
    braze_users = tmp_path / "braze-users.txt"
    braze_users.write_text("\n".join(BRAZE_PEOPLE) + "\n")
    brevo_users = tmp_path / "brevo-users.txt"
    brevo_users.write_text("\n".join(BREVO_PEOPLE) + "\n")

    def reconcile(connector: str, users: Path, *extra: str) -> Any:
        return run_cli(prefsync_env, "reconcile", "acme", connector, "--users", str(users), *extra)

    # A tool that holds what it was told agrees: exit 0.
    for connector, users in (("braze", braze_users), ("brevo", brevo_users)):
        done = reconcile(connector, users, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) | {"unreadable": {}} == {
            "checked": 4 if connector == "brevo" else 5,
            "drifted": [],
            "fixed": 0,
            "missed_signals_stored": 0,
            "unreadable": {},
        }

    # When 3 Braze profiles and 2 Brevo contacts are edited behind prefsync's back,
    fake.edit_braze_profile("bz-0", {"email_subscribe": "subscribed"})
    fake.edit_braze_profile("bz-2", {GROUP: "unsubscribed"})
    fake.edit_braze_profile("bz-3", {"newsletter_frequency": "daily"})
    fake.edit_brevo_contact("u1@example.com", {"FREQUENCY": "monthly"})
    fake.edit_brevo_contact("u3@example.com", {"emailBlacklisted": True})

    # Then reconcile lists exactly those people and fields, and exits 1,
    done = reconcile("braze", braze_users, "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["drifted"] == [
        {
            "user": "bz-0",
            "field": "email_subscribe",
            "expected": "opted_in",
            "found": "subscribed",
            "kind": "drift",
        },
        {
            "user": "bz-2",
            "field": GROUP,
            "expected": "subscribed",
            "found": "unsubscribed",
            "kind": "drift",
        },
        {
            "user": "bz-3",
            "field": "newsletter_frequency",
            "expected": "weekly",
            "found": "daily",
            "kind": "drift",
        },
    ]
    # a refusal in the listening tool that prefsync never heard of as a missed signal,
    done = reconcile("brevo", brevo_users, "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["drifted"] == [
        {
            "user": "u1@example.com",
            "field": "FREQUENCY",
            "expected": "weekly",
            "found": "monthly",
            "kind": "drift",
        },
        {
            "user": "u3@example.com",
            "field": "emailBlacklisted",
            "expected": False,
            "found": True,
            "kind": "missed-signal",
        },
    ]
    # and the lines say the same.
    done = reconcile("brevo", brevo_users)
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        'u1@example.com FREQUENCY expected="weekly" found="monthly"',
        "u3@example.com emailBlacklisted expected=false found=true missed-signal",
        "checked 4, drifted 2 (2 fields), fixed 0",
    ]
    # --all-known: the people the PMP lists that prefsync has a record of, the same drift.
    for user in [*BRAZE_PEOPLE, "stranger"]:
        fake.add_pmp_user({"organization_user_id": user, "consents": {}})
    done = run_cli(prefsync_env, "reconcile", "acme", "braze", "--all-known", "--json")
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["checked"] == len(BRAZE_PEOPLE)
    assert [d["user"] for d in json.loads(done.stdout)["drifted"]] == ["bz-0", "bz-2", "bz-3"]
    # Stats show each connector's last reconcile and the totals of every run.
    stats = run_cli(prefsync_env, "stats", "--tenant", "acme").stdout
    assert "last reconcile of acme/brevo\t" in stats
    assert " drift: checked 4, drifted 2, fixed 0 (all runs: checked 12, drifted 4, " in stats
    assert " drift: checked 5, drifted 3, fixed 0 (all runs: checked 15, drifted 6, " in stats
    # The reads were Braze's export and group status, and Brevo's contact reads.
    paths = {(call.method, call.path) for call in fake.calls()}
    assert ("POST", "/users/export/ids") in paths
    assert ("GET", "/subscription/status/get") in paths

    # When --fix enqueues the corrections,
    done = reconcile("braze", braze_users, "--fix", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["fixed"] == 3
    done = reconcile("brevo", brevo_users, "--fix", "--json")
    assert done.returncode == 1, done.stderr  # the missed signal stays
    assert json.loads(done.stdout)["fixed"] == 1
    # the missed signal stored in the signals inbox, as the tool's signal would have been,
    # once however often reconcile finds it,
    assert json.loads(done.stdout)["missed_signals_stored"] == 1
    again = reconcile("brevo", brevo_users, "--fix", "--json")
    assert json.loads(again.stdout)["missed_signals_stored"] == 0

    # which the worker acts on as on the tool's own signal: one PMP consent event for u3
    # (written by prefsync), the inbox emptied.
    def written() -> list[dict]:
        return [e for e in fake.pmp_events if e["user"]["organization_user_id"] == "u3@example.com"]

    (consent,) = wait_until(written, timeout=30)
    assert consent["delegate"]["id"] == "prefsync"
    client = redis.Redis.from_url(prefsync_env["PREFSYNC_REDIS_URL"])
    wait_until(lambda: client.llen(INBOX) == 0, timeout=30)

    # then the worker corrects the tools, and a second reconcile agrees,
    def braze_agrees() -> bool:
        return reconcile("braze", braze_users).returncode == 0

    wait_until(braze_agrees, timeout=30, message=lambda: fake.calls("braze")[-3:])
    assert fake.braze_profile("bz-0")["email_subscribe"] == "opted_in"
    assert fake.braze_profile("bz-2")["groups"][GROUP] == "subscribed"
    assert fake.braze_profile("bz-3")["custom_attributes"]["newsletter_frequency"] == "weekly"

    def brevo_left() -> list[str]:
        done = reconcile("brevo", brevo_users, "--json")
        return [d["user"] for d in json.loads(done.stdout)["drifted"]]

    # The missed refusal, acted on as a signal, is prefsync's view now: nothing drifts.
    wait_until(lambda: brevo_left() == [], timeout=30)
    assert fake.brevo_state("u1@example.com")["attributes"]["FREQUENCY"] == "weekly"
    # and the refusal edited into the listening tool was never overwritten.
    assert fake.brevo_state("u3@example.com")["emailBlacklisted"] is True
    writes = [
        call
        for call in fake.calls("brevo")
        if call.method != "GET"
        and (call.identifier == "u3@example.com" or "u3@example.com" in json.dumps(call.body))
    ]
    assert len(writes) == 1  # its first delivery only: the tool holding the refusal is not told


def test_reconcile_usage_errors_exit_2(tmp_path: Path, prefsync_env, fake_destinations, run_cli):
    users = tmp_path / "users.txt"
    users.write_text("bz-0\n")
    config = tmp_path / "braze.json"
    config.write_text(json.dumps(braze_config(fake_destinations.url) | {"id": "braze"}))
    assert run_cli(prefsync_env, "connectors", "put", "acme", str(config)).returncode == 0
    for args, says in (
        (("acme", "braze"), "exactly one of --users FILE and --all-known"),
        (("acme", "braze", "--users", str(users), "--all-known"), "exactly one of"),
        (("acme", "braze", "--all-known"), "prefsync pmp put acme FILE"),
        (("acme", "nope", "--users", str(users)), "has no connector 'nope'"),
    ):
        done = run_cli(prefsync_env, "reconcile", *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr
