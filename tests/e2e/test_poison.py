"""Poison events: a delivery that makes the connector raise something nobody expected, or
hang past every time limit, is dead-lettered once, with the exception's type and message;
the worker keeps going and the events queued behind it are delivered.

The worker runs tests.e2e.poisoned (the real app, its Braze connector poisoned for two
users) with one pool process, so a poison event that blocked it would block them all.
"""

from __future__ import annotations

import json
import time

from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    consent_event,
    outcome_counts,
    wait_until,
)
from tests.e2e.poisoned import HANGS, RAISES
from tests.e2e.test_guarantee import QUICK_RECOVERY, dead_letters, enqueue


def test_poison_events_are_dead_lettered_once_and_the_events_behind_them_are_delivered(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    env = {**prefsync_env, **QUICK_RECOVERY}  # hard time limit: 2 s
    config = json.dumps(braze_config(fake.url))
    assert run_cli(env, "connectors", "put", "acme", "-", input=config).returncode == 0
    worker = start_worker(env, concurrency=1, app="tests.e2e.poisoned")
    healthy = [f"healthy-{n}" for n in range(20)]
    events = [
        consent_event(f"e-{user}", user, "2026-11-20T09:00:00Z", {"newsletter": True})
        for user in [RAISES, HANGS, *healthy]
    ]
    enqueue(run_cli, env, events)

    wait_until(
        lambda: {o["external_id"] for o in braze_attributes(fake.calls("braze"))} == set(healthy),
        timeout=30,
    )
    wait_until(lambda: len(dead_letters(run_cli, env)) >= 2, timeout=15)
    time.sleep(1.0)  # a second report of the same failure would land by now
    lines = dead_letters(run_cli, env)
    assert len(lines) == 2, lines
    entries = {}
    for line in lines:
        shown = run_cli(env, "dlq", "show", line.split("\t")[0])
        assert shown.returncode == 0, shown.stderr
        entry = json.loads(shown.stdout)
        entries[entry["user"]] = entry
    assert set(entries) == {RAISES, HANGS}
    assert entries[RAISES]["reason"].startswith("unexpected error: ZeroDivisionError: poisoned")
    assert len(entries[RAISES]["attempts"]) == 1  # a bug is not retried
    assert "TimeLimitExceeded" in entries[HANGS]["reason"]
    # Each is kept with its event, so it can be replayed once the connector is fixed.
    assert entries[RAISES]["payload"] == events[0]

    assert worker.running
    stats = run_cli(env, "stats", "--tenant", "acme")
    assert stats.returncode == 0, stats.stderr
    counts = outcome_counts(stats.stdout)
    assert (counts["delivered"], counts["dead_lettered"]) == (20, 2)
    sent_to = {o["external_id"] for c in fake.calls("braze") for o in c.body["attributes"]}
    assert sent_to.isdisjoint({RAISES, HANGS})
