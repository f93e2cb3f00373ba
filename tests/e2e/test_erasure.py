"""A deleted person is deleted everywhere, provably, and stays deleted (docs/erasure.md).

Real Redis, a real worker, the local Braze/Brevo look-alike. The Braze connector is the
example with a push mapping and a subscription group (plus a custom attribute), the Brevo
one the example with an SMS mapping; each test sets their ``on_user_deleted``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.conftest import dump
from tests.e2e.helpers import BRAZE_KEY, BREVO_KEY, braze_attributes, example, jsonl, wait_until

ERIN = "erin.erased@example.com"
ERIN_PMP_ID = "pmp-erin-0001"
MONDAY = "2026-11-16T09:00:00Z"
TUESDAY = "2026-11-17T09:00:00Z"  # the deletion
WEDNESDAY = "2026-11-18T09:00:00Z"
CUSTOM = "likes_news"  # a custom attribute: never part of an erasure


def connectors(fake_url: str, policy: str) -> list[dict[str, Any]]:
    braze = example("connectors", "braze-push-erasure.json")
    braze["authentication"] = {"api_key": BRAZE_KEY, "server": fake_url}
    braze["mappings"].append({"id": CUSTOM, "value": "consents_purposes_newsletter_enabled"})
    brevo = example("connectors", "sendinblue-sms-erasure.json")
    brevo["config"]["api_key"] = BREVO_KEY
    for config in (braze, brevo):
        config["on_user_deleted"] = policy
    return [braze, brevo]


def put_connectors(run_cli, env, fake, policy: str) -> None:
    for config in connectors(fake.url, policy):
        done = run_cli(env, "connectors", "put", "acme", "-", input=json.dumps(config))
        assert done.returncode == 0, done.stderr


def consent(event_id: str, at: str, user: str = ERIN, **purposes: bool) -> dict[str, Any]:
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "organization_id": "acme",
                "created_at": at,
                "updated_at": at,
                "user": {"id": ERIN_PMP_ID, "organization_user_id": user},
                "consents": {
                    "purposes": [{"id": p, "enabled": on} for p, on in purposes.items()],
                    "channels": [{"id": "push", "enabled": True}, {"id": "sms", "enabled": True}],
                },
            }
        },
    }


def user_deleted(at: str = TUESDAY, user: str = ERIN) -> dict[str, Any]:
    return {
        "type": "user.deleted",
        "parameters": {
            "entity": {
                "id": ERIN_PMP_ID,
                "organization_id": "acme",
                "organization_user_id": user,
                "version": 7,
                "created_at": MONDAY,
                "updated_at": at,
                "consents": {"purposes": []},
            }
        },
    }


def enqueue(run_cli, env, *events) -> None:
    done = run_cli(env, "enqueue", "-", input=jsonl(list(events)))
    assert done.returncode == 0, done.stderr


def audited(run_cli, env, user: str = ERIN) -> list[dict[str, Any]]:
    """The person's audit entries, oldest first, found by their id (which is hashed)."""
    listed = run_cli(env, "audit", "acme", "--user", user, "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in reversed(listed.stdout.splitlines()) if line.strip()]


def erasure_outcomes(run_cli, env) -> dict[str, tuple[str, str]]:
    """connector -> (outcome, reason or status) of the person's erasure."""
    return {
        e["connector_id"]: (e["outcome"], e["reason"] or str(e["status"]))
        for e in audited(run_cli, env)
        if e["event_key"].startswith("user.deleted:")
    }


def forgotten(redis_server) -> bool:
    return not any(pii in dump(redis_server) for pii in (ERIN.encode(), ERIN_PMP_ID.encode()))


def deletions_and_tracks(fake) -> tuple[list[Any], list[Any]]:
    braze = fake.calls("braze")
    return [c for c in braze if c.path == "/users/delete"], [
        c for c in braze if c.path == "/users/track"
    ]


EXPECTED = {
    "ignore": {
        "braze": ("skipped", "unsupported_type"),
        "sendinblue": ("skipped", "unsupported_type"),
    },
    "unsubscribe": {"braze": ("delivered", "201"), "sendinblue": ("delivered", "204")},
    "delete": {"braze": ("delivered", "201"), "sendinblue": ("delivered", "204")},
}


@pytest.mark.parametrize("policy", ["ignore", "unsubscribe", "delete"])
def test_each_policy_sends_what_it_says_then_prefsync_forgets_and_the_past_stays_erased(
    policy, prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, policy)
    start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, consent("mon", MONDAY, newsletter=True, product_updates=True))
    wait_until(lambda: len(audited(run_cli, prefsync_env)) == 2, timeout=15)
    fake.reset()

    enqueue(run_cli, prefsync_env, user_deleted())
    wait_until(lambda: len(erasure_outcomes(run_cli, prefsync_env)) == 2, timeout=15)
    assert erasure_outcomes(run_cli, prefsync_env) == EXPECTED[policy]

    deletions, tracks = deletions_and_tracks(fake)
    brevo = fake.calls("brevo")
    if policy == "ignore":
        assert fake.calls() == []
    elif policy == "unsubscribe":
        assert deletions == []
        [track] = tracks
        assert track.body == {
            "attributes": [
                {
                    "external_id": ERIN,
                    "_update_existing_only": True,  # an erasure never creates the person
                    "email_subscribe": "unsubscribed",
                    "push_subscribe": "unsubscribed",
                    "subscription_groups": [
                        {
                            "subscription_group_id": "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55",
                            "subscription_state": "unsubscribed",
                        }
                    ],
                }
            ]
        }
        [put] = brevo
        assert (put.method, put.identifier, put.query) == (
            "PUT",
            ERIN,
            {"identifierType": "email_id"},
        )
        assert put.body == {"emailBlacklisted": True, "smsBlacklisted": True}
    else:
        assert tracks == []
        [deletion] = deletions
        assert deletion.body == {"external_ids": [ERIN]}
        assert fake.braze_deleted == [ERIN]
        [delete] = brevo
        assert (delete.method, delete.identifier, delete.query, delete.status) == (
            "DELETE",
            ERIN,
            {"identifierType": "email_id"},
            204,
        )

    # Once each connector ended its part, nothing in Redis (queues included) names her.
    wait_until(lambda: forgotten(redis_server), timeout=10, message="the id is still in Redis")

    # An older consent event arriving late sends nothing anywhere, and says why.
    fake.reset()
    enqueue(run_cli, prefsync_env, consent("late", MONDAY, newsletter=True))
    wait_until(lambda: len(audited(run_cli, prefsync_env)) == 6, timeout=15)
    assert fake.calls() == []
    late = [
        e for e in audited(run_cli, prefsync_env) if e["event_key"].startswith("event.created:late")
    ]
    assert sorted((e["connector_id"], e["outcome"], e["reason"]) for e in late) == [
        ("braze", "skipped", "erased"),
        ("sendinblue", "skipped", "erased"),
    ]
    # The audit still proves what each destination was told, under a hash of the id.
    assert {e["user"] for e in audited(run_cli, prefsync_env)} != {ERIN}
    assert forgotten(redis_server)

    # One dated after the deletion is a new life, propagated normally.
    enqueue(run_cli, prefsync_env, consent("wed", WEDNESDAY, newsletter=False))
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=15)
    assert braze_attributes(fake.calls("braze"))[0]["email_subscribe"] == "unsubscribed"


def test_a_dead_letter_of_the_person_is_gone_and_a_replay_cannot_revive_them(
    prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    start_worker(prefsync_env)
    fake.fail_next("braze", 1, status=400)  # refused for good: dead-lettered
    enqueue(run_cli, prefsync_env, consent("mon", MONDAY, newsletter=True))
    wait_until(lambda: ERIN in run_cli(prefsync_env, "dlq", "list").stdout, timeout=15)

    enqueue(run_cli, prefsync_env, user_deleted())
    wait_until(lambda: len(erasure_outcomes(run_cli, prefsync_env)) == 2, timeout=15)
    wait_until(lambda: forgotten(redis_server), timeout=10, message="the id is still in Redis")
    assert run_cli(prefsync_env, "dlq", "list").stdout.strip() == "0 dead letter(s)"

    fake.reset()
    replayed = run_cli(prefsync_env, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 0 dead letter(s)" in replayed.stdout
    assert fake.calls() == []
    kinds = [(e["connector_id"], e["outcome"]) for e in audited(run_cli, prefsync_env)]
    assert ("braze", "dead_lettered") in kinds  # the proof of what happened stays


def test_a_retry_waiting_when_the_deletion_lands_sends_nothing_and_the_erasure_completes(
    prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    # The retry waits 8 s: long enough for the deletion to land first, even on a busy host.
    slow_retries = {"PREFSYNC_RETRY_COUNTDOWNS": "8,8,8,8,8", "PREFSYNC_VISIBILITY_TIMEOUT": "30"}
    start_worker(prefsync_env, extra_env=slow_retries)
    fake.fail_next("braze", 1, status=503)
    enqueue(run_cli, prefsync_env, consent("mon", MONDAY, newsletter=True))
    wait_until(lambda: [c.status for c in fake.calls("braze")] == [503], timeout=15)

    enqueue(run_cli, prefsync_env, user_deleted())
    wait_until(lambda: fake.braze_deleted == [ERIN], timeout=15)

    def retried() -> list[tuple[str, str]]:
        return [
            (e["connector_id"], e["reason"])
            for e in audited(run_cli, prefsync_env)
            if e["event_key"].startswith("event.created:mon") and e["connector_id"] == "braze"
        ]

    wait_until(
        lambda: retried() == [("braze", "erased")],
        timeout=30,
        message=lambda: f"{audited(run_cli, prefsync_env)} {fake.calls('braze')}",
    )
    deletions, tracks = deletions_and_tracks(fake)
    assert [c.status for c in tracks] == [503]  # the retry sent nothing
    assert [c.body for c in deletions] == [{"external_ids": [ERIN]}]
    assert erasure_outcomes(run_cli, prefsync_env) == EXPECTED["delete"]
    wait_until(lambda: forgotten(redis_server), timeout=10, message="the id is still in Redis")


def test_prefsync_erase_starts_the_same_erasure_for_a_request_from_elsewhere(
    prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, consent("mon", MONDAY, newsletter=True))
    wait_until(lambda: len(audited(run_cli, prefsync_env)) == 2, timeout=15)

    done = run_cli(prefsync_env, "erase", "acme", ERIN, "--yes")
    assert done.returncode == 0, done.stderr
    assert ERIN not in done.stdout  # the output names the person by their hash

    wait_until(lambda: len(erasure_outcomes(run_cli, prefsync_env)) == 2, timeout=15)
    assert erasure_outcomes(run_cli, prefsync_env) == EXPECTED["delete"]
    assert fake.braze_deleted == [ERIN]
    assert [c.method for c in fake.calls("brevo")][-1] == "DELETE"
    wait_until(lambda: forgotten(redis_server), timeout=10, message="the id is still in Redis")


def test_an_id_a_destination_echoed_is_in_neither_redis_nor_the_log_after_the_erasure(
    prefsync_env, fake_destinations, start_worker, run_cli, redis_server
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    # Braze refuses the person's update, echoing their id in its message (letter case its own).
    fake.refuse_braze_user(ERIN, f"bad external id {ERIN.upper()}")
    worker = start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, consent("mon", MONDAY, newsletter=True))
    wait_until(lambda: len(audited(run_cli, prefsync_env)) == 2, timeout=15)
    assert ("braze", "dead_lettered") in {
        (e["connector_id"], e["outcome"]) for e in audited(run_cli, prefsync_env)
    }

    done = run_cli(prefsync_env, "erase", "acme", ERIN, "--yes")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: len(erasure_outcomes(run_cli, prefsync_env)) == 2, timeout=15)

    wait_until(
        lambda: ERIN.encode() not in dump(redis_server).lower(),
        timeout=10,
        message="the id is still in Redis",
    )
    assert "erin.erased" not in worker.log().lower()


@pytest.mark.parametrize(
    ("erased", "variant"),
    [
        ("case.test@example.com", "Case.Test@example.com"),
        ("Case.Two@example.com", "case.two@example.com"),
    ],
)
def test_a_case_variant_of_an_erased_address_never_reaches_brevo_but_is_another_braze_user(
    erased, variant, prefsync_env, fake_destinations, start_worker, run_cli
):
    # Brevo tells contacts' email addresses apart without letter case, Braze its
    # external_ids with it: the erasure of one spelling outranks the other's past in Brevo
    # only.
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, user_deleted(user=erased))
    wait_until(lambda: len(audited(run_cli, prefsync_env, erased)) == 2, timeout=15)
    fake.reset()

    enqueue(run_cli, prefsync_env, consent("older", MONDAY, user=variant, newsletter=True))
    wait_until(lambda: len(audited(run_cli, prefsync_env, variant)) == 2, timeout=15)
    outcomes = {
        e["connector_id"]: (e["outcome"], e["reason"])
        for e in audited(run_cli, prefsync_env, variant)
    }
    assert outcomes["sendinblue"] == ("skipped", "erased")
    assert fake.calls("brevo") == []
    assert outcomes["braze"][0] == "delivered"
    assert [a["external_id"] for a in braze_attributes(fake.calls("braze"))] == [variant]


def test_an_older_consent_of_another_spelling_never_overwrites_a_brevo_refusal(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    # jane@ and Jane@ are one Brevo contact and two Braze users.
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake, "delete")
    start_worker(prefsync_env)
    refusal = consent("newer", TUESDAY, user="jane@example.com", newsletter=False)
    enqueue(run_cli, prefsync_env, refusal)
    wait_until(lambda: len(audited(run_cli, prefsync_env, "jane@example.com")) == 2, timeout=15)
    fake.reset()

    enqueue(
        run_cli, prefsync_env, consent("older", MONDAY, user="Jane@example.com", newsletter=True)
    )
    wait_until(lambda: len(audited(run_cli, prefsync_env, "Jane@example.com")) == 2, timeout=15)
    outcomes = {
        e["connector_id"]: (e["outcome"], e["reason"])
        for e in audited(run_cli, prefsync_env, "Jane@example.com")
    }
    assert outcomes["sendinblue"] == ("skipped", "stale")
    assert fake.calls("brevo") == []
    assert outcomes["braze"][0] == "delivered"
