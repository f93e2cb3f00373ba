"""`prefsync backfill` end to end: a real worker, a real Redis, the fake PMP, Braze and Brevo.
Every user of the PMP (three cursor pages) or of a gzip export reaches both tools with
every field right; a second run sends nothing; a newer live event keeps its value; a run
killed halfway and resumed delivers each user once."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    brevo_config,
    consent_event,
    jsonl,
    outcome_counts,
)
from tests.processes import REPO_ROOT, wait_until

USERS = 250  # three pages of the PMP's 100
BACKFILLED_AT = "2026-11-01T10:00:00.000Z"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"  # braze.json's group <- product_updates


def pmp_user(number: int) -> dict[str, Any]:
    return {
        "id": f"pmp-{number}",
        "organization_user_id": f"user-{number}@example.com",
        "updated_at": BACKFILLED_AT,
        "version": 4,
        "regulation": "gdpr",
        "consents": {
            "purposes": [
                {"id": "newsletter", "enabled": number % 2 == 0},
                {"id": "product_updates", "enabled": number % 3 == 0},
            ]
        },
    }


def set_up(tmp_path: Path, env: dict[str, str], fake: Any, run_cli: Any) -> None:
    """A tenant with a Braze and a Brevo connector and PMP credentials for the fake PMP."""
    files = {
        "braze.json": {**braze_config(fake.url), "id": "braze-main"},
        "brevo.json": {**brevo_config(), "id": "brevo-main"},
    }
    for name, config in files.items():
        path = tmp_path / name
        path.write_text(json.dumps(config))
        assert run_cli(env, "connectors", "put", "acme", str(path)).returncode == 0
    credentials = {"api_key": "k" * 16, "api_secret": "s" * 16, "api_url": f"{fake.url}/pmp/v1"}
    stored = run_cli(env, "pmp", "put", "acme", "-", input=json.dumps(credentials))
    assert stored.returncode == 0, stored.stderr


def ended(env: dict[str, str], run_cli: Any) -> int:
    counts = outcome_counts(run_cli(env, "stats", "--tenant", "acme").stdout)
    return sum(counts.values())


def wait_ended(env: dict[str, str], run_cli: Any, count: int) -> None:
    wait_until(
        lambda: ended(env, run_cli) >= count, timeout=60, message=lambda: ended(env, run_cli)
    )


def braze_state(fake: Any) -> dict[str, dict[str, Any]]:
    """external_id -> the last email_subscribe and group state Braze accepted."""
    state: dict[str, dict[str, Any]] = {}
    for obj in braze_attributes(fake.calls("braze")):
        person = state.setdefault(obj["external_id"], {})
        if "email_subscribe" in obj:
            person["email"] = obj["email_subscribe"]
        for group in obj.get("subscription_groups") or ():
            person[group["subscription_group_id"]] = group["subscription_state"]
    return state


def brevo_state(fake: Any) -> dict[str, dict[str, Any]]:
    """email -> the last emailBlacklisted and EMAIL_NOTIFICATION Brevo accepted."""
    state: dict[str, dict[str, Any]] = {}
    for call in fake.calls("brevo"):
        if call.status != 204:
            continue
        if call.path == "/v3/contacts/batch":
            items = [(item["email"], item) for item in call.body["contacts"]]
        elif call.method == "PUT":
            items = [(call.identifier, call.body)]
        else:
            continue
        for email, body in items:
            person = state.setdefault(email, {})
            if "emailBlacklisted" in body:
                person["blacklisted"] = body["emailBlacklisted"]
            person.update(body.get("attributes") or {})
    return state


def assert_every_field_right(fake: Any, newer: dict[int, bool] | None = None) -> None:
    newer = newer or {}
    braze, brevo = braze_state(fake), brevo_state(fake)
    for number in range(USERS):
        user = f"user-{number}@example.com"
        newsletter = newer.get(number, number % 2 == 0)
        product_updates = number % 3 == 0
        assert braze[user] == {
            "email": "opted_in" if newsletter else "unsubscribed",
            GROUP: "subscribed" if product_updates else "unsubscribed",
        }, user
        assert brevo[user] == {
            "blacklisted": not newsletter,
            "EMAIL_NOTIFICATION": product_updates,
        }, user


def test_the_pmp_backfills_braze_and_brevo_once_and_a_newer_event_keeps_its_value(
    tmp_path, prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a PMP of 250 users (three cursor pages), a tenant with Braze and Brevo,
    fake, env = fake_destinations, prefsync_env
    for number in range(USERS):
        fake.add_pmp_user(pmp_user(number))
    set_up(tmp_path, env, fake, run_cli)
    start_worker(env, concurrency=2)
    # and user 7 opting in live after the PMP's status the backfill reads (opted out),
    live = tmp_path / "live.jsonl"
    live.write_text(
        jsonl(
            [
                consent_event(
                    "live-7", "user-7@example.com", "2026-11-20T09:00:00.000Z", {"newsletter": True}
                )
            ]
        )
    )
    assert run_cli(env, "enqueue", str(live)).returncode == 0
    wait_ended(env, run_cli, 2)

    # When the tenant is backfilled from the PMP,
    done = run_cli(env, "backfill", "acme", "--json")

    # then every user is read from three pages and enqueued,
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["read"], summary["enqueued"], summary["refused"]) == (USERS, USERS, 0)
    pages = [c for c in fake.calls("pmp") if c.path.endswith("/consents/users")]
    assert len(pages) == 3
    wait_ended(env, run_cli, 2 + 2 * USERS)
    # every field of every user is right in both tools, user 7's newer opt-in kept.
    assert_every_field_right(fake, newer={7: True})

    # When it runs again, nothing is sent.
    calls = len(fake.calls("braze")) + len(fake.calls("brevo"))
    again = run_cli(env, "backfill", "acme", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["enqueued"] == USERS
    wait_ended(env, run_cli, 2 + 4 * USERS)
    assert len(fake.calls("braze")) + len(fake.calls("brevo")) == calls


def test_a_gzip_export_backfills_the_same(
    tmp_path, prefsync_env, fake_destinations, start_worker, run_cli
):
    fake, env = fake_destinations, prefsync_env
    set_up(tmp_path, env, fake, run_cli)
    export = tmp_path / "export.jsonl.gz"
    export.write_bytes(gzip.compress(jsonl([pmp_user(n) for n in range(USERS)]).encode()))
    start_worker(env, concurrency=2)

    done = run_cli(env, "backfill", "acme", "--file", str(export))

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"read {USERS} user(s), enqueued {USERS}, refused 0"
    assert not fake.calls("pmp")
    wait_ended(env, run_cli, 2 * USERS)
    assert_every_field_right(fake)


def test_a_run_killed_halfway_and_resumed_delivers_each_user_once(
    tmp_path, prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake, env = fake_destinations, prefsync_env
    for number in range(USERS):
        fake.add_pmp_user(pmp_user(number))
    set_up(tmp_path, env, fake, run_cli)
    start_worker(env, concurrency=2)
    # Given a PMP that answers slowly, so the run can be killed while page 2 is asked,
    fake.set_delay("pmp", 1.5)  # within PREFSYNC_HTTP_TIMEOUT (2 s)
    backfill = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "backfill", "acme", "--connector", "braze-main"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(lambda: client.hget("prefsync:backfill:acme", "pmp") == b"100", timeout=30)
        backfill.send_signal(signal.SIGKILL)
    finally:
        backfill.wait(timeout=10)
    # When it is resumed,
    fake.set_delay("pmp", 0)
    done = run_cli(env, "backfill", "acme", "--connector", "braze-main", "--resume", "--json")

    # then it went on after the first page, and the position is gone once it ended,
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["resumed_from"], summary["read"]) == ("100", USERS - 100)
    assert client.hget("prefsync:backfill:acme", "pmp") is None
    wait_ended(env, run_cli, USERS)
    # and Braze, the one connector named, heard of each user once; Brevo of none.
    told = [obj["external_id"] for obj in braze_attributes(fake.calls("braze"))]
    assert sorted(told) == sorted(f"user-{n}@example.com" for n in range(USERS))
    assert not fake.calls("brevo")
