"""The delivery guarantee end to end: retries across the (scaled-down) schedule, dead
letters and their replay, newest wins per field, idempotency, and recovery from a worker
killed with SIGKILL. Real Redis, real worker processes, the local Braze look-alike.

The environment (conftest.prefsync_env) scales the schedule down to
0.1, 0.3, 0.6, 0.9, 1.1 s: attempts at +0, 0.1, 0.4, 1.0, 1.9 and 3.0 s.
"""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    consent_event,
    jsonl,
    last_braze_value,
    outcome_counts,
    wait_until,
)

NEWSLETTER_ON = {"newsletter": True}
# A visibility timeout of seconds (and the limits it must outlast): what a crashed worker
# held, or the broker lost, is back in seconds rather than an hour.
QUICK_RECOVERY = {
    "PREFSYNC_TASK_TIME_LIMIT": "2",
    "PREFSYNC_HTTP_TIMEOUT": "0.5",  # fits the 1 s soft limit with a wait for Redis
    "PREFSYNC_RATE_LIMIT_MAX_WAIT": "1",
    "PREFSYNC_VISIBILITY_TIMEOUT": "4",
}


@pytest.fixture
def braze_tenant(prefsync_env, fake_destinations, run_cli):
    """acme with one Braze connector pointed at the fake."""
    put = run_cli(
        prefsync_env,
        "connectors",
        "put",
        "acme",
        "-",
        input=json.dumps(braze_config(fake_destinations.url)),
    )
    assert put.returncode == 0, put.stderr
    return fake_destinations


def enqueue(run_cli, env, events) -> None:
    done = run_cli(env, "enqueue", "-", input=jsonl(events))
    assert done.returncode == 0, done.stderr


def users_delivered(fake, status: int = 201) -> Counter:
    """How many times each user was sent to Braze and answered ``status``."""
    return Counter(obj["external_id"] for obj in braze_attributes(fake.calls("braze"), status))


def dead_letters(run_cli, env) -> list[str]:
    listed = run_cli(env, "dlq", "list")
    assert listed.returncode == 0, listed.stderr
    return listed.stdout.splitlines()[:-1]


def older_and_newer(user: str) -> tuple[dict, dict]:
    """Two events of one user: the older opts in to the newsletter and product updates, the
    newer (an hour later) opts out of the newsletter only."""
    older = consent_event(
        f"a-{user}", user, "2026-11-20T09:00:00Z", {"newsletter": True, "product_updates": True}
    )
    newer = consent_event(f"b-{user}", user, "2026-11-20T10:00:00Z", {"newsletter": False})
    return older, newer


def load_during_outage(fake, env, start_worker, run_cli, prefix: str) -> list[str]:
    """Braze down (503), a worker with two processes, one event each for ten users."""
    users = [f"{prefix}-{n}@example.com" for n in range(10)]
    fake.outage("braze", 503)
    start_worker(env, concurrency=2)
    events = [consent_event(f"e-{u}", u, "2026-11-20T09:00:00Z", NEWSLETTER_ON) for u in users]
    enqueue(run_cli, env, events)
    return users


def test_outage_shorter_than_the_schedule_delivers_every_event_once(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    users = load_during_outage(fake, prefsync_env, start_worker, run_cli, "short")

    wait_until(lambda: len(users_delivered(fake, status=503)) == len(users), timeout=10)
    time.sleep(1.2)
    fake.recover("braze")

    wait_until(lambda: set(users_delivered(fake)) == set(users), timeout=15)
    time.sleep(1.5)  # any stray extra attempt would land by now
    assert users_delivered(fake) == Counter({u: 1 for u in users})
    assert dead_letters(run_cli, prefsync_env) == []


def test_outage_longer_than_the_schedule_dead_letters_every_event_and_replay_delivers_them(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    users = load_during_outage(fake, prefsync_env, start_worker, run_cli, "long")

    # Six attempts each, then a dead letter each.
    wait_until(
        lambda: len(dead_letters(run_cli, prefsync_env)) == len(users),
        timeout=30,
        message=lambda: (
            f"{len(fake.calls('braze'))} calls, dlq: {dead_letters(run_cli, prefsync_env)}"
        ),
    )
    assert users_delivered(fake, status=503) == Counter({u: 6 for u in users})
    first = dead_letters(run_cli, prefsync_env)[0].split("\t")
    shown = json.loads(run_cli(prefsync_env, "dlq", "show", first[0]).stdout)
    assert [a["status"] for a in shown["attempts"]] == [503] * 6
    assert shown["tenant"] == "acme" and shown["connector_id"] == "braze"
    assert "gave up after 6 attempts" in shown["reason"]
    assert "braze-acme-test-key" not in json.dumps(shown)

    # After recovery, a replay of all delivers every one and empties the queue.
    fake.recover("braze")
    replayed = run_cli(prefsync_env, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(users)} dead letter(s), 0 failed" in replayed.stdout
    wait_until(lambda: set(users_delivered(fake)) == set(users), timeout=15)
    assert users_delivered(fake) == Counter({u: 1 for u in users})
    listed = run_cli(prefsync_env, "dlq", "list")
    assert listed.stdout.strip() == "0 dead letter(s)"


def test_permanent_refusal_dead_letters_at_once_and_a_failing_replay_comes_back_as_new(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    fake.fail_next("braze", 2, status=400, body={"message": "Invalid attribute"})
    start_worker(prefsync_env)
    enqueue(
        run_cli, prefsync_env, [consent_event("e-1", "u-1", "2026-11-20T09:00:00Z", NEWSLETTER_ON)]
    )

    wait_until(lambda: len(dead_letters(run_cli, prefsync_env)) == 1, timeout=10)
    (line,) = dead_letters(run_cli, prefsync_env)
    entry_id, tenant, connector, user, reason, _ = line.split("\t")
    assert (tenant, connector, user) == ("acme", "braze", "u-1")
    assert "Invalid attribute" in reason
    assert len(fake.calls("braze")) == 1  # not retried

    replayed = run_cli(prefsync_env, "dlq", "replay", entry_id)
    assert replayed.returncode == 0, replayed.stderr
    wait_until(lambda: len(fake.calls("braze")) == 2, timeout=10)
    (again,) = wait_until(lambda: dead_letters(run_cli, prefsync_env), timeout=10)
    assert again.split("\t")[0] != entry_id


def test_an_older_event_retried_after_a_newer_one_delivers_only_its_other_fields(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    older, newer = older_and_newer("u-1")
    # The older event's first attempt fails; the newer one is delivered before its retry.
    env = {**prefsync_env, "PREFSYNC_RETRY_COUNTDOWNS": "3,1"}
    fake.fail_next("braze", 1, status=503)
    start_worker(env)
    enqueue(run_cli, env, [older])
    wait_until(lambda: len(fake.calls("braze")) == 1, timeout=10)
    enqueue(run_cli, env, [newer])

    wait_until(lambda: len(braze_attributes(fake.calls("braze"))) == 2, timeout=15)
    assert [c.status for c in fake.calls("braze")] == [503, 201, 201]
    delivered = braze_attributes(fake.calls("braze"))
    assert delivered[0]["email_subscribe"] == "unsubscribed"
    assert "email_subscribe" not in delivered[1]  # the older opt-in is stale
    assert delivered[1]["subscription_groups"][0]["subscription_state"] == "subscribed"


def test_a_replayed_older_event_never_overwrites_newer_consent(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    older, newer = older_and_newer("u-1")
    fake.fail_next("braze", 1, status=400)  # the older one is dead-lettered
    start_worker(prefsync_env)
    enqueue(run_cli, prefsync_env, [older])
    wait_until(lambda: dead_letters(run_cli, prefsync_env), timeout=10)
    enqueue(run_cli, prefsync_env, [newer])
    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)

    assert run_cli(prefsync_env, "dlq", "replay", "--tenant", "acme").returncode == 0
    wait_until(lambda: len(braze_attributes(fake.calls("braze"))) == 2, timeout=10)
    last = braze_attributes(fake.calls("braze"))[-1]
    assert "email_subscribe" not in last
    assert last["subscription_groups"][0]["subscription_state"] == "subscribed"


def test_concurrent_older_and_newer_events_always_end_with_the_newer_value(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    start_worker(prefsync_env, concurrency=4)
    users = [f"race-{n}" for n in range(40)]
    events = []
    for user in users:
        # Newer first in the queue, so the older one often runs at the same time or after.
        older, newer = older_and_newer(user)
        events += [newer, older]
    enqueue(run_cli, prefsync_env, events)

    def groups_delivered() -> set[str]:
        return {
            obj["external_id"]
            for obj in braze_attributes(fake.calls("braze"))
            if "subscription_groups" in obj
        }

    def last_state() -> dict[str, str]:
        return last_braze_value(fake)

    # A delivery that finds the user held by the other one is deferred (about a second),
    # so the newer value may come last a moment after the older one was sent.
    newest = {user: "unsubscribed" for user in users}
    wait_until(
        lambda: groups_delivered() == set(users) and last_state() == newest,
        timeout=30,
        message=lambda: {u: v for u, v in last_state().items() if v != "unsubscribed"},
    )
    time.sleep(2.0)  # past any deferral: nothing older may land after the newer value
    assert last_state() == newest


def test_the_same_event_enqueued_three_times_is_sent_once(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    event = consent_event("dup", "u-dup", "2026-11-20T09:00:00Z", NEWSLETTER_ON)
    start_worker(prefsync_env, concurrency=2)
    enqueue(run_cli, prefsync_env, [event, event, event])

    def outcomes() -> dict[str, int]:
        return outcome_counts(run_cli(prefsync_env, "stats", "--tenant", "acme").stdout)

    wait_until(
        lambda: outcomes().get("delivered", 0) + outcomes().get("skipped", 0) == 3, timeout=15
    )
    assert outcomes() == {"delivered": 1, "skipped": 2, "skipped:duplicate": 2}
    assert len(fake.calls("braze")) == 1


def test_a_retry_countdown_shorter_than_the_visibility_timeout_runs_once(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    # A retry waits unacked in the worker; with the visibility timeout just above the
    # countdown plus the time limit, the broker must not hand it out a second time.
    fake = braze_tenant
    env = {
        **prefsync_env,
        "PREFSYNC_RETRY_COUNTDOWNS": "3",
        "PREFSYNC_TASK_TIME_LIMIT": "1",
        "PREFSYNC_HTTP_TIMEOUT": "0.5",
        "PREFSYNC_RATE_LIMIT_MAX_WAIT": "1",
        "PREFSYNC_VISIBILITY_TIMEOUT": "5",
    }
    fake.fail_next("braze", 1, status=503)
    start_worker(env, concurrency=2)
    enqueue(run_cli, env, [consent_event("e", "u-vis", "2026-11-20T09:00:00Z", NEWSLETTER_ON)])

    wait_until(lambda: braze_attributes(fake.calls("braze")), timeout=10)
    time.sleep(7)  # past the visibility timeout and a restore sweep
    assert [c.status for c in fake.calls("braze")] == [503, 201]


def test_worker_killed_mid_load_loses_nothing_after_restart(
    prefsync_env, braze_tenant, start_worker, run_cli
):
    fake = braze_tenant
    env = {**prefsync_env, **QUICK_RECOVERY}
    users = [f"crash-{n}" for n in range(1000)]  # 10 messages, 20 calls of 50 users
    fake.set_delay("braze", 0.2)
    fake.fail_next("braze", 3, status=503)  # some batches wait for a retry when the kill comes
    worker = start_worker(env, concurrency=2)
    enqueue(
        run_cli,
        env,
        [consent_event(f"e-{u}", u, "2026-11-20T09:00:00Z", NEWSLETTER_ON) for u in users],
    )
    wait_until(lambda: len(users_delivered(fake)) >= 200, timeout=30)

    worker.kill()
    assert len(users_delivered(fake)) < len(users), "the load ended before the kill"
    start_worker(env, concurrency=2)

    wait_until(
        lambda: set(users_delivered(fake)) == set(users),
        timeout=60,
        message=lambda: f"{len(users_delivered(fake))} of {len(users)} delivered",
    )
    # At most the calls in flight at the kill (one per pool process, 50 users each) were
    # sent twice: each batch is marked done as soon as it is answered.
    repeated = sum(n - 1 for n in users_delivered(fake).values())
    assert repeated <= 2 * 50
    assert dead_letters(run_cli, env) == []


def test_a_message_the_broker_lost_is_published_again_from_the_outbox(
    prefsync_env, braze_tenant, redis_server, start_worker, run_cli
):
    # The window the outbox closes: Redis has handed the message out (BRPOP) and the
    # worker dies before recording it as unacknowledged. Emptying the queue is that loss.
    fake = braze_tenant
    env = {**prefsync_env, **QUICK_RECOVERY}
    event = consent_event("e-lost", "u-lost", "2026-11-20T09:00:00Z", NEWSLETTER_ON)
    enqueue(run_cli, env, [event])
    broker = redis_server.client()
    assert broker.delete("celery") == 1  # the one message is gone from the queue

    worker = start_worker(env)

    wait_until(lambda: users_delivered(fake) == Counter({"u-lost": 1}), timeout=20)
    assert "published again" in worker.log()
    wait_until(lambda: broker.zcard("prefsync:outbox:due") == 0, timeout=5)
