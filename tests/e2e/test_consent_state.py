"""A person's consent is never misstated by how events combine (consent integrity).
Real Redis, a real worker, the local Braze/Brevo look-alike; events go in through
`prefsync enqueue` (or, to test the worker's own check, straight onto the route queue).

The example Braze config maps OPTED_IN <- newsletter, UNSUBSCRIBED <- email_optout, a
subscription group <- product_updates; the Brevo one EMAIL_CAMPAIGNS_SUBSCRIBED <- newsletter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    brevo_config,
    consent_event,
    example,
    jsonl,
    last_braze_value,
    wait_until,
)

MONDAY = "2026-11-16T09:00:00Z"
TUESDAY = "2026-11-17T09:00:00Z"
WEDNESDAY = "2026-11-18T09:00:00Z"


def put_connectors(run_cli, env, fake) -> None:
    for config in (braze_config(fake.url), brevo_config()):
        done = run_cli(env, "connectors", "put", "acme", "-", input=json.dumps(config))
        assert done.returncode == 0, done.stderr


def enqueue(run_cli, env, *events) -> None:
    done = run_cli(env, "enqueue", "-", input=jsonl(list(events)))
    assert done.returncode == 0, done.stderr


def brevo_bodies(fake, user: str) -> list[dict]:
    return [call.body for call in fake.calls("brevo") if f"/contacts/{user}" in call.path]


def audited_outcomes(run_cli, env, user: str) -> list[tuple[str, str, str]]:
    """(connector, outcome, reason) of every audit entry of ``user``, oldest first."""
    listed = run_cli(env, "audit", "acme", "--user", user, "--json")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines() if line.strip()]
    return [(e["connector_id"], e["outcome"], e.get("reason") or "") for e in reversed(entries)]


def test_a_standing_refusal_survives_a_later_event_that_only_opts_in_to_something_else(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)

    # Monday: the person refuses all email. Tuesday: an event carrying only the newsletter.
    enqueue(run_cli, prefsync_env, consent_event("mon", "u-1", MONDAY, {"email_optout": True}))
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)
    enqueue(run_cli, prefsync_env, consent_event("tue", "u-1", TUESDAY, {"newsletter": True}))
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, "u-1")) == 4, timeout=10)

    sent = braze_attributes(fake.calls("braze"))
    assert [obj.get("email_subscribe") for obj in sent] == ["unsubscribed"]
    assert ("braze", "skipped", "unchanged") in audited_outcomes(run_cli, prefsync_env, "u-1")
    # Brevo's blocklist is fed by the newsletter alone: the opt-in is a real change there.
    assert brevo_bodies(fake, "u-1")[-1]["emailBlacklisted"] is False


def test_a_standing_opt_in_is_not_downgraded_by_a_later_withdrawn_refusal(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)

    enqueue(run_cli, prefsync_env, consent_event("mon", "u-2", MONDAY, {"newsletter": True}))
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)
    enqueue(run_cli, prefsync_env, consent_event("tue", "u-2", TUESDAY, {"email_optout": False}))
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, "u-2")) == 4, timeout=10)

    sent = braze_attributes(fake.calls("braze"))
    assert [obj.get("email_subscribe") for obj in sent] == ["opted_in"]

    # A real change of the derived state is sent: Wednesday's refusal unsubscribes.
    enqueue(run_cli, prefsync_env, consent_event("wed", "u-2", WEDNESDAY, {"email_optout": True}))
    wait_until(lambda: len(braze_attributes(fake.calls("braze"))) == 2, timeout=10)
    assert braze_attributes(fake.calls("braze"))[-1]["email_subscribe"] == "unsubscribed"


def test_an_event_from_the_future_is_refused_and_the_next_real_opt_out_is_delivered(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)
    future = consent_event("2999", "u-3", "2999-01-01T00:00:00Z", {"newsletter": True})

    # The producer refuses it, naming the setting.
    refused = run_cli(prefsync_env, "enqueue", "-", input=jsonl([future]))
    assert refused.returncode != 0
    assert "ahead of the clock" in refused.stderr and "PREFSYNC_MAX_CLOCK_SKEW" in refused.stderr

    # Put on the queue some other way, the worker refuses it too: a dead letter that says so.
    publish_to_route(prefsync_env, future)
    listed = wait_until(
        lambda: run_cli(prefsync_env, "dlq", "list").stdout.splitlines()[:-1], timeout=10
    )
    (entry,) = listed
    assert "ahead of the clock" in entry
    assert fake.calls() == []

    enqueue(run_cli, prefsync_env, consent_event("now", "u-3", TUESDAY, {"newsletter": False}))
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)
    assert braze_attributes(fake.calls("braze"))[0]["email_subscribe"] == "unsubscribed"
    assert brevo_bodies(fake, "u-3") and brevo_bodies(fake, "u-3")[0]["emailBlacklisted"] is True


def test_two_people_whose_events_share_an_id_and_time_are_both_delivered(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)

    first = consent_event("same-id", "u-4", MONDAY, {"newsletter": False})
    second = consent_event("same-id", "u-5", MONDAY, {"newsletter": False})
    enqueue(run_cli, prefsync_env, first)
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)
    enqueue(run_cli, prefsync_env, second)  # a message of its own, after the first ended

    wait_until(lambda: len(braze_attributes(fake.calls("braze"))) == 2, timeout=10)
    assert [obj["external_id"] for obj in braze_attributes(fake.calls("braze"))] == ["u-4", "u-5"]
    wait_until(lambda: brevo_bodies(fake, "u-5"), timeout=10)
    assert brevo_bodies(fake, "u-4") and brevo_bodies(fake, "u-5")


def test_state_show_and_forget(prefsync_env, fake_destinations, start_worker, run_cli):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, consent_event("mon", "u-6", MONDAY, {"email_optout": True}))
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, "u-6")) == 2, timeout=10)

    shown = run_cli(prefsync_env, "state", "show", "acme", "u-6")
    assert shown.returncode == 0, shown.stderr
    assert "consents_purposes_email_optout_enabled" in shown.stdout
    assert "2026-11-16T09:00:00" in shown.stdout
    assert "email_subscribe" in shown.stdout and "unsubscribed" in shown.stdout

    refused = run_cli(prefsync_env, "state", "forget", "acme", "u-6", input="n\n")
    assert refused.returncode != 0
    assert (
        "consents_purposes_email_optout_enabled"
        in run_cli(prefsync_env, "state", "show", "acme", "u-6").stdout
    )

    forgotten = run_cli(prefsync_env, "state", "forget", "acme", "u-6", "--yes")
    assert forgotten.returncode == 0, forgotten.stderr
    after = run_cli(prefsync_env, "state", "show", "acme", "u-6")
    assert after.returncode == 1
    assert after.stdout == ""
    assert "nothing known about 'u-6' in tenant 'acme'" in after.stderr


def test_inputs_of_one_field_in_concurrent_messages_end_with_the_state_the_newest_give(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env, concurrency=4)
    users = [f"race-{n}" for n in range(30)]

    def wave(name: str, at: str, purposes: dict[str, bool]) -> list[dict]:
        return [consent_event(f"{name}-{u}", u, at, purposes) for u in users]

    # Newest first, each wave its own messages: four processes work on them at once.
    enqueue(run_cli, prefsync_env, *wave("wed", WEDNESDAY, {"email_optout": False}))
    enqueue(run_cli, prefsync_env, *wave("tue", TUESDAY, {"newsletter": True}))
    enqueue(run_cli, prefsync_env, *wave("mon", MONDAY, {"email_optout": True}))

    def last_state() -> dict[str, str]:
        return last_braze_value(fake)

    # Newest values: newsletter true (Tuesday), email_optout false (Wednesday).
    expected = dict.fromkeys(users, "opted_in")
    wait_until(
        lambda: last_state() == expected,
        timeout=30,
        message=lambda: {u: v for u, v in last_state().items() if v != "opted_in"},
    )
    time.sleep(2.0)  # past any deferral: nothing may land after the newest state
    assert last_state() == expected


JANE = "jane.doe@example.com"


def test_the_quickstart_examples_agree_and_state_show_explains_a_value_not_re_sent(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    """The quickstart's two events leave prefsync and both destinations agreeing. A
    user.updated that restates a value differing from what a destination was last told is
    not re-sent (the rule): `state show` says so on the line that differs."""
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)
    created, updated = (
        example("events", "event-created.json"),
        example("events", "user-updated.json"),
    )
    enqueue(run_cli, prefsync_env, created)
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, JANE)) == 2, timeout=10)
    enqueue(run_cli, prefsync_env, updated)
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, JANE)) == 4, timeout=10)

    shown = run_cli(prefsync_env, "state", "show", "acme", JANE)
    assert shown.returncode == 0, shown.stderr
    fed = [line.split("\t") for line in shown.stdout.splitlines() if line.startswith("connector ")]
    assert [line[2:4] for line in fed] == [
        ['now "unsubscribed"', 'last delivered "unsubscribed"'],  # the product_updates group
        ['now "unsubscribed"', 'last delivered "unsubscribed"'],  # email_subscribe
        ["now true", "last delivered true"],  # Brevo's emailBlacklisted
    ]
    assert "why:" not in shown.stdout

    # Each file again, as the quickstart suggests: nothing is sent, and the audit says why.
    enqueue(run_cli, prefsync_env, updated)
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, JANE)) == 6, timeout=10)
    enqueue(run_cli, prefsync_env, created)
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, JANE)) == 8, timeout=10)
    assert sorted(audited_outcomes(run_cli, prefsync_env, JANE)[4:6]) == [
        ("braze", "skipped", "duplicate"),
        ("sendinblue", "skipped", "duplicate"),
    ]
    # Braze was told the newest newsletter_frequency from it; Brevo's two properties were
    # both set since by the user.updated (docs/operations.md, "stale").
    assert sorted(audited_outcomes(run_cli, prefsync_env, JANE)[6:]) == [
        ("braze", "skipped", "duplicate"),
        ("sendinblue", "skipped", "stale"),
    ]
    assert len(fake.calls("braze")) + len(fake.calls("brevo")) == 4

    # A later user.updated says product_updates is on, in its old_entity as in its new one.
    for entity, version, at in (("old_entity", 5, "2026-11-21T18:02:44.000Z"),
                                ("new_entity", 6, "2026-11-22T10:00:00.000Z")):  # fmt: skip
        updated["parameters"][entity].update(version=version, updated_at=at)
        for purpose in updated["parameters"][entity]["consents"]["purposes"]:
            if purpose["id"] == "product_updates":
                purpose["enabled"] = True
    enqueue(run_cli, prefsync_env, updated)
    wait_until(lambda: len(audited_outcomes(run_cli, prefsync_env, JANE)) == 10, timeout=10)

    shown = run_cli(prefsync_env, "state", "show", "acme", JANE)
    assert shown.returncode == 0, shown.stderr
    group = next(line for line in shown.stdout.splitlines() if "7c0b8f2e" in line)
    assert group.split("\t")[2:4] == ['now "subscribed"', 'last delivered "unsubscribed"']
    assert "prefsync does not re-send an unchanged value" in group
    # Nothing reached Braze for it: the destination keeps what it was last told.
    assert all(
        obj.get("subscription_groups") is None for obj in braze_attributes(fake.calls("braze"))[1:]
    )

    unknown = run_cli(prefsync_env, "state", "show", "acme", "nobody@example.com")
    assert unknown.returncode == 1
    assert unknown.stdout == ""
    assert unknown.stderr.strip().endswith(
        "error: nothing known about 'nobody@example.com' in tenant 'acme': no event of theirs "
        "was delivered (USER is the organization_user_id; see `prefsync audit`)"
    )


def user_updated(user: str, version: int, at: str, newsletter: bool) -> dict:
    """A ``user.updated`` of ``user`` whose newsletter purpose became ``newsletter``."""

    def entity(enabled: bool) -> dict:
        return {
            "id": f"pmp-{user}",
            "organization_id": "acme",
            "organization_user_id": user,
            "version": version,
            "created_at": MONDAY,
            "updated_at": at,
            "consents": {"purposes": [{"id": "newsletter", "enabled": enabled}]},
        }

    change = {"source": {}, "old_entity": entity(not newsletter), "new_entity": entity(newsletter)}
    return {"type": "user.updated", "parameters": change}


def publish_to_route(env: dict[str, str], event: dict) -> None:
    """Put ``event`` on the route queue past the producer's check, as a buggy producer of
    one's own would."""
    publish = (
        "import json, sys\n"
        "from worker.queue.publishing import publish\n"
        "from worker.queue.tasks import route\n"
        "publish(route, [[json.loads(sys.stdin.read())]])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", publish],
        cwd=REPO_ROOT,
        env=env,
        input=json.dumps(event),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_a_version_far_ahead_never_makes_a_later_opt_out_stale(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    put_connectors(run_cli, prefsync_env, fake)
    start_worker(prefsync_env)

    # One version beyond what can be compared exactly: refused by the producer, and by the
    # worker (a dead letter that names the field).
    huge = user_updated("u-7", 10**30, MONDAY, newsletter=True)
    refused = run_cli(prefsync_env, "enqueue", "-", input=jsonl([huge]))
    assert refused.returncode != 0
    assert "version" in refused.stderr
    publish_to_route(prefsync_env, huge)
    listed = wait_until(
        lambda: run_cli(prefsync_env, "dlq", "list").stdout.splitlines()[:-1], timeout=10
    )
    (entry,) = listed
    assert "version" in entry
    # One far ahead but exact: accepted, and outranked by the person's next real change.
    enqueue(run_cli, prefsync_env, user_updated("u-8", 10**15, MONDAY, newsletter=True))
    wait_until(lambda: last_braze_value(fake).get("u-8") == "opted_in", timeout=10)

    enqueue(run_cli, prefsync_env, user_updated("u-7", 8, TUESDAY, newsletter=False))
    enqueue(run_cli, prefsync_env, user_updated("u-8", 8, TUESDAY, newsletter=False))
    wait_until(
        lambda: last_braze_value(fake) == {"u-7": "unsubscribed", "u-8": "unsubscribed"},
        timeout=15,
        message=lambda: (last_braze_value(fake), audited_outcomes(run_cli, prefsync_env, "u-8")),
    )
    assert ("braze", "skipped", "stale") not in audited_outcomes(run_cli, prefsync_env, "u-8")
