"""The core pipeline end to end: configs stored and events enqueued through the CLI, a real
Redis, a real Celery worker, and the calls that reach the local Braze/Brevo look-alike."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import (
    BRAZE_KEY,
    BREVO_KEY,
    EXAMPLES,
    braze_config,
    brevo_config,
    example,
    outcome_counts,
    wait_until,
)

OTHER_TENANT_KEY = "braze-globex-test-key-0003"
JANE = "jane.doe@example.com"
PRODUCT_UPDATES_GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"


def put_config(run_cli, env, tmp_path: Path, tenant: str, config: dict, *extra: str) -> str:
    path = tmp_path / f"{tenant}-{config['type_id']}.json"
    path.write_text(json.dumps(config))
    done = run_cli(env, "connectors", "put", tenant, str(path), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_example_events_reach_both_destinations_and_no_other_tenant(
    tmp_path, prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given acme's Braze and Brevo connectors, and a second tenant whose Braze connector
    # would answer for the same user id,
    fake = fake_destinations
    put_config(run_cli, prefsync_env, tmp_path, "acme", braze_config(fake.url, BRAZE_KEY))
    put_config(run_cli, prefsync_env, tmp_path, "acme", brevo_config(BREVO_KEY))
    put_config(run_cli, prefsync_env, tmp_path, "globex", braze_config(fake.url, OTHER_TENANT_KEY))
    listed = run_cli(prefsync_env, "connectors", "list", "acme")
    assert listed.returncode == 0, listed.stderr
    assert [line.split("\t")[:2] for line in listed.stdout.splitlines()] == [
        ["braze", "braze"],
        ["sendinblue", "sendinblue"],
    ]
    assert BRAZE_KEY not in listed.stdout and BREVO_KEY not in listed.stdout
    preview = run_cli(
        prefsync_env, "preview", "acme", str(EXAMPLES / "events" / "event-created.json"), "--json"
    )
    assert preview.returncode == 0, preview.stderr
    assert BRAZE_KEY not in preview.stdout and BREVO_KEY not in preview.stdout
    start_worker(prefsync_env, concurrency=2)

    # When the consent event is enqueued through the CLI,
    done = run_cli(prefsync_env, "enqueue", str(EXAMPLES / "events" / "event-created.json"))
    assert done.returncode == 0, done.stderr
    assert "enqueued 1 event(s), 0 invalid" in done.stdout
    wait_until(lambda: len(fake.calls()) >= 2, timeout=20, message=lambda: fake.calls())

    # then Braze gets the opt-in, the subscription group and the attribute,
    (braze,) = fake.calls("braze")
    assert (braze.method, braze.path, braze.status) == ("POST", "/users/track", 201)
    assert braze.headers["authorization"] == f"Bearer {BRAZE_KEY}"
    assert braze.body == {
        "attributes": [
            {
                "external_id": JANE,
                "_update_existing_only": True,
                "email_subscribe": "opted_in",
                "subscription_groups": [
                    {
                        "subscription_group_id": PRODUCT_UPDATES_GROUP,
                        "subscription_state": "unsubscribed",
                    }
                ],
                "newsletter_frequency": "weekly",
            }
        ]
    }
    # and Brevo updates the contact by email.
    (brevo,) = fake.calls("brevo")
    assert (brevo.method, brevo.path, brevo.status) == (
        "PUT",
        "/v3/contacts/jane.doe%40example.com",
        204,
    )
    assert brevo.query == {"identifierType": "email_id"}
    assert brevo.headers["api-key"] == BREVO_KEY
    assert brevo.body == {"attributes": {"EMAIL_NOTIFICATION": False}, "emailBlacklisted": False}

    # and the dry run had shown exactly these requests (the first of each connector's).
    previewed = {p["connector_id"]: p["requests"][0] for p in json.loads(preview.stdout)}
    assert previewed["braze"]["url"] == f"{fake.url}/users/track"
    assert previewed["braze"]["body"] == braze.body
    assert previewed["braze"]["headers"]["Authorization"] == "Bearer …0001"
    assert previewed["sendinblue"]["method"] == "PUT"
    assert previewed["sendinblue"]["url"] == (
        f"{fake.url}/v3/contacts/jane.doe%40example.com?identifierType=email_id"
    )
    assert previewed["sendinblue"]["body"] == brevo.body

    # When the user's update arrives (newsletter withdrawn, opt-out given),
    done = run_cli(
        prefsync_env, "enqueue", "-", input=(EXAMPLES / "events" / "user-updated.json").read_text()
    )
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(fake.calls()) >= 4, timeout=20, message=lambda: fake.calls())

    # then only what changed is sent: an unsubscribe to both, nothing about product updates.
    assert fake.calls("braze")[1].body == {
        "attributes": [
            {"external_id": JANE, "_update_existing_only": True, "email_subscribe": "unsubscribed"}
        ]
    }
    assert fake.calls("brevo")[1].body == {"emailBlacklisted": True}

    # The other tenant's connector was never used.
    assert all(
        call.headers.get("authorization") != f"Bearer {OTHER_TENANT_KEY}" for call in fake.calls()
    )
    stats = run_cli(prefsync_env, "stats", "--tenant", "acme")
    assert stats.returncode == 0, stats.stderr
    assert "delivered\t4" in stats.stdout.splitlines()
    globex = run_cli(prefsync_env, "stats", "--tenant", "globex").stdout
    assert outcome_counts(globex) == {}
    assert "no outcomes recorded yet" in globex.splitlines()


def test_cli_enqueue_reports_each_invalid_event_and_enqueues_the_valid_ones(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a JSON Lines file with a valid event, a broken line and an event without a user,
    valid = example("events", "event-created.json")
    no_user = json.loads(json.dumps(valid))
    del no_user["parameters"]["entity"]["user"]
    lines = [json.dumps(valid), "{not json", json.dumps(no_user)]
    put = run_cli(
        prefsync_env, "connectors", "put", "acme", "-", input=json.dumps(brevo_config(BREVO_KEY))
    )
    assert put.returncode == 0, put.stderr
    start_worker(prefsync_env)

    # When it is enqueued,
    done = run_cli(prefsync_env, "enqueue", "-", input="\n".join(lines) + "\n")

    # then each invalid line is named with its reason, the command fails,
    assert done.returncode == 1
    errors = done.stderr.splitlines()
    assert errors[0].startswith("line 2: not valid JSON")
    assert errors[1].startswith("line 3: ") and "parameters.entity.user" in errors[1]
    assert "enqueued 1 event(s), 2 invalid" in done.stdout
    # and the valid one is delivered all the same.
    wait_until(lambda: fake_destinations.calls("brevo"), timeout=20)
