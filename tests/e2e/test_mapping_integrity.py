"""Consent integrity at the edges of a mapping, end to end: configs stored through
the real `prefsync connectors put`, a real Redis and worker, the local Braze/Brevo fake.

- a mapping id naming a reserved destination field is refused with the id to map instead;
- a mapping value the property grammar cannot produce (a typo) is refused;
- a Brevo identifier of ".." is never sent: the event is dead-lettered with the reason;
- a 400 in a Braze call of 50 users dead-letters that one person and delivers the 49 others;
- `connectors check` shows which mapping matched events and which never did.
"""

from __future__ import annotations

import json

from tests.e2e.helpers import (
    BRAZE_KEY,
    BREVO_KEY,
    braze_config,
    brevo_config,
    consent_event,
    wait_until,
)
from tests.e2e.test_guarantee import dead_letters


def put(run_cli, env, tenant: str, config: dict):
    return run_cli(env, "connectors", "put", tenant, "-", input=json.dumps(config))


def test_reserved_mapping_ids_are_refused_at_put_with_the_id_to_map_instead(
    prefsync_env, fake_destinations, run_cli
):
    # Given a Braze config mapping push_subscribe and email, and a Brevo config mapping
    # smsBlacklisted and EMAIL (any case),
    braze = braze_config(fake_destinations.url, BRAZE_KEY)
    braze["mappings"] += [
        {"id": "push_subscribe", "value": "consents_channels_push_enabled"},
        {"id": "Email", "value": "consents_purposes_newsletter_enabled"},
    ]
    brevo = brevo_config(BREVO_KEY)
    brevo["config"]["properties"] += [
        {"id": "smsBlacklisted", "value": "consents_channels_sms_enabled"},
        {"id": "email", "value": "consents_purposes_newsletter_enabled"},
    ]

    # When they are stored through the CLI,
    braze_put = put(run_cli, prefsync_env, "acme", braze)
    brevo_put = put(run_cli, prefsync_env, "acme", brevo)

    # then both are refused, every problem on its own line naming what to map instead,
    assert braze_put.returncode == 1
    braze_lines = braze_put.stderr.splitlines()
    assert braze_lines[0].startswith(
        "error: config refused: mappings[4].id: 'push_subscribe' is reserved by Braze"
    )
    assert "map PUSH_OPTED_IN or PUSH_UNSUBSCRIBED" in braze_lines[0]
    assert braze_lines[1].startswith("mappings[5].id: 'Email' is reserved by Braze")
    assert "map OPTED_IN or UNSUBSCRIBED" in braze_lines[1]
    assert brevo_put.returncode == 1
    brevo_lines = brevo_put.stderr.splitlines()
    assert brevo_lines[0].startswith(
        "error: config refused: config.properties[2].id: 'smsBlacklisted' is reserved by Brevo"
    )
    assert "map SMS_CAMPAIGNS_SUBSCRIBED" in brevo_lines[0]
    assert brevo_lines[1].startswith("config.properties[3].id: 'email' is reserved by Brevo")
    assert "map EMAIL_CAMPAIGNS_SUBSCRIBED" in brevo_lines[1]
    # and nothing is stored.
    assert run_cli(prefsync_env, "connectors", "list", "acme").stdout == ""


def test_a_typo_in_a_mapping_value_is_refused_at_put(prefsync_env, fake_destinations, run_cli):
    # Given a config whose OPTED_IN names "..._enabld",
    config = braze_config(fake_destinations.url, BRAZE_KEY)
    config["mappings"][0]["value"] = "consents_purposes_newsletter_enabld"

    # When it is stored,
    done = put(run_cli, prefsync_env, "acme", config)

    # then it is refused naming the mapping and the names the grammar can produce.
    assert done.returncode == 1
    assert done.stderr.startswith(
        "error: config refused: mappings[0].value: 'consents_purposes_newsletter_enabld' "
        "(mapping OPTED_IN) is not a property name an event can carry"
    )
    assert "consents_purposes_<P>_enabled" in done.stderr
    assert run_cli(prefsync_env, "connectors", "list", "acme").stdout == ""


def test_a_brevo_identifier_of_dot_dot_is_never_sent(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a Brevo connector, and a batch whose first event names the contact "..",
    assert put(run_cli, prefsync_env, "acme", brevo_config(BREVO_KEY)).returncode == 0
    start_worker(prefsync_env)
    batch = [
        consent_event("e-dots", "..", "2026-11-20T09:00:00Z", {"newsletter": False}),
        consent_event("e-ok", "u-1", "2026-11-20T09:00:00Z", {"newsletter": False}),
    ]

    # When it is enqueued,
    done = run_cli(prefsync_env, "enqueue", "-", input=json.dumps(batch))
    assert done.returncode == 0, done.stderr
    wait_until(
        lambda: fake_destinations.calls("brevo") and dead_letters(run_cli, prefsync_env),
        timeout=20,
        message=lambda: (fake_destinations.calls(), dead_letters(run_cli, prefsync_env)),
    )

    # then only u-1's contact was called: nothing reached "/v3/" or any other path,
    calls = fake_destinations.calls()
    assert [(c.method, c.path, c.query) for c in calls] == [
        ("PUT", "/v3/contacts/u-1", {"identifierType": "ext_id"})
    ]
    # and the ".." event is dead-lettered for the connector, with the reason.
    (entry,) = dead_letters(run_cli, prefsync_env)
    _, tenant, connector, user, reason, _ = entry.split("\t")
    assert (tenant, connector, user) == ("acme", "sendinblue", "..")
    assert reason == (
        "refused by prefsync, not sent: not sent to Brevo: the contact identifier "
        "(organization_user_id) cannot name one contact: it is or holds a '.' or '..' path "
        "segment, which a URL resolves away"
    )


def test_a_400_in_a_braze_call_of_50_dead_letters_one_person_and_delivers_49(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    # Given a Braze connector whose workspace refuses one of 50 users' objects with a 400
    # for the whole call,
    fake = fake_destinations
    assert put(run_cli, prefsync_env, "acme", braze_config(fake.url, BRAZE_KEY)).returncode == 0
    fake.refuse_braze_user("u-17", "Invalid attribute value for u-17")
    users = [f"u-{n}" for n in range(50)]
    batch = [
        consent_event(f"e-{user}", user, "2026-11-20T09:00:00Z", {"newsletter": True})
        for user in users
    ]
    start_worker(prefsync_env)

    # When the 50 events are enqueued (one message, one Braze call of 50),
    done = run_cli(prefsync_env, "enqueue", "-", input=json.dumps(batch))
    assert done.returncode == 0, done.stderr

    # then the call is split until u-17 is alone: the 49 others are delivered,
    def accepted() -> set[str]:
        return {
            obj["external_id"]
            for call in fake.calls("braze")
            if call.status == 201
            for obj in call.body["attributes"]
        }

    wait_until(
        lambda: len(accepted()) == 49 and dead_letters(run_cli, prefsync_env),
        timeout=30,
        message=lambda: (sorted(accepted()), dead_letters(run_cli, prefsync_env)),
    )
    assert accepted() == set(users) - {"u-17"}
    assert len(fake.calls("braze")[0].body["attributes"]) == 50
    # and exactly one person is dead-lettered, with Braze's message (the person's id it
    # echoes replaced: the entry names them, the reason need not).
    (entry,) = dead_letters(run_cli, prefsync_env)
    _, tenant, connector, user, reason, _ = entry.split("\t")
    assert (tenant, connector, user) == ("acme", "braze", "u-17")
    assert reason == (
        "refused by the destination: Braze refused the update (HTTP 400): "
        "Invalid attribute value for [user]"
    )
    stats = run_cli(prefsync_env, "stats", "--tenant", "acme").stdout.splitlines()
    assert "delivered\t49" in stats and "dead_lettered\t1" in stats

    # `connectors check` shows the mapping that matched and those that never did.
    check = run_cli(prefsync_env, "connectors", "check", "acme")
    assert check.returncode == 0, check.stderr
    lines = check.stdout.splitlines()
    assert lines[1].startswith("  OPTED_IN <- consents_purposes_newsletter_enabled: last matched ")
    assert lines[2] == "  UNSUBSCRIBED <- consents_purposes_email_optout_enabled: never matched"
    assert lines[-1] == "0 invalid config(s), 3 mapping(s) never matched an event"
