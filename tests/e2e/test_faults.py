"""Hostile conditions: a worker killed with a queue of batches in flight, Redis restarted
under load, producers while Redis is down or hung, a 429 storm, a destination slower than
the HTTP timeout, a backlog older than the visibility timeout, and a delivery cut off by a
Redis outage longer than the soft time limit. Real Redis, real worker processes, the local
Braze/Brevo look-alike.

Events travel in batches, as in production: a message carries up to 100 events (the CLI
and ``enqueue_many``), a delivery coalesces the events of one user into one change, and a
Braze call carries up to 50 users. So the tests count sends per user (one object in a call)
rather than calls per event, and bound re-sends by the calls in flight (one per pool
process, up to 50 users each).

Not repeated here, see test_guarantee.py: a destination outage shorter and longer than the
retry window, a lone worker crash (1,000 events) and a message the broker lost.

Each test is short under `make test`. `make chaos` sets PREFSYNC_CHAOS=1, which scales event
counts (and the length of each fault) up ten times; `-rP` there prints the figures each test
measured (lines starting with "[faults]").
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime
from itertools import pairwise

import pytest

from tests.e2e.conftest import REPO_ROOT
from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    brevo_config,
    consent_event,
    jsonl,
    wait_until,
)
from tests.e2e.helpers import outcome_counts as parse_outcome_counts
from tests.e2e.test_guarantee import QUICK_RECOVERY, dead_letters, older_and_newer
from worker.producer import MAX_BATCH

CHAOS = os.environ.get("PREFSYNC_CHAOS") == "1"
SCALE = 10 if CHAOS else 1

BRAZE_BATCH = 50  # users per /users/track call (PREFSYNC_BRAZE_BATCH_SIZE's default)
PRODUCT_UPDATES_GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
PRODUCT_UPDATES = f"group:{PRODUCT_UPDATES_GROUP}"
# Where every user of older_and_newer ends: the newer event's newsletter opt-out and the
# older event's product-updates opt-in (the newer one says nothing about product updates).
BRAZE_FINAL = {"email_subscribe": "unsubscribed", PRODUCT_UPDATES: "subscribed"}
# Everything a Braze object for older_and_newer may carry besides the user when the two
# events travel in different messages: the older event whole, the older event once the
# newer one owns the newsletter, the newer event.
OLDER_WHOLE = {"email_subscribe": "opted_in", PRODUCT_UPDATES: "subscribed"}
OLDER_REST = {PRODUCT_UPDATES: "subscribed"}
NEWER = {"email_subscribe": "unsubscribed"}
BRAZE_BODIES = [OLDER_WHOLE, OLDER_REST, NEWER]
# Two events of a user in one batch are coalesced: one object, the newest of each.
COALESCED = BRAZE_FINAL
REDIS_PASSWORD = "hunter2-redis-secret"


def report(text: str) -> None:
    # Shown by `make chaos` (-rP) and with a failure: the figures a run measured.
    print(f"[faults] {text}")


def put_connector(run_cli, env, config: dict) -> None:
    done = run_cli(env, "connectors", "put", "acme", "-", input=json.dumps(config))
    assert done.returncode == 0, done.stderr


def enqueue_all(run_cli, env, events: list[dict]) -> float:
    """Enqueue ``events`` with the CLI (MAX_BATCH a message, in order); returns the time."""
    started = time.monotonic()
    done = run_cli(env, "enqueue", "-", input=jsonl(events), timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"enqueued {len(events)} event(s), 0 invalid" in done.stdout
    return time.monotonic() - started


def messages_for(events: list[dict]) -> int:
    return -(-len(events) // MAX_BATCH)


def user_of_event(event: dict) -> str:
    return event["parameters"]["entity"]["user"]["organization_user_id"]


def users_of(call) -> list[str]:
    """The users one call was about: a Brevo contact, every contact of a Brevo batch, or
    every object of a Braze call."""
    if call.service == "brevo" and call.path.endswith("/contacts/batch"):
        return [contact["email"] for contact in call.body["contacts"]]
    if call.service == "brevo":
        return [call.identifier]
    return [obj["external_id"] for obj in call.body["attributes"]]


def braze_fields(obj: dict) -> dict[str, str]:
    fields = {"email_subscribe": obj["email_subscribe"]} if "email_subscribe" in obj else {}
    for group in obj.get("subscription_groups", ()):
        fields[f"group:{group['subscription_group_id']}"] = group["subscription_state"]
    return fields


def braze_final_state(fake) -> dict[str, dict[str, str]]:
    """Each user's fields as Braze holds them once it applied every accepted call in the
    order they arrived."""
    state: dict[str, dict[str, str]] = defaultdict(dict)
    for obj in braze_attributes(fake.calls("braze")):
        state[obj["external_id"]].update(braze_fields(obj))
    return state


def not_at_newest(fake, users: list[str]) -> dict[str, dict[str, str]]:
    state = braze_final_state(fake)
    return {u: state.get(u, {}) for u in users if state.get(u) != BRAZE_FINAL}


def braze_sends(fake) -> Counter:
    """Accepted Braze objects per user: how many times a call carried each user."""
    return Counter(obj["external_id"] for obj in braze_attributes(fake.calls("braze")))


def braze_objects(fake) -> dict[str, list[dict[str, str]]]:
    """The fields of every object Braze accepted, per user, in the order they arrived."""
    objects: dict[str, list[dict[str, str]]] = defaultdict(list)
    for obj in braze_attributes(fake.calls("braze")):
        objects[obj["external_id"]].append(braze_fields(obj))
    return objects


def older_after_newer(fake) -> dict[str, list[dict[str, str]]]:
    """Users whose older newsletter opt-in reached Braze after their newer opt-out."""
    late = {}
    for user, objects in braze_objects(fake).items():
        states = [fields.get("email_subscribe") for fields in objects]
        if "unsubscribed" in states and "opted_in" in states[states.index("unsubscribed") :]:
            late[user] = objects
    return late


def outcome_counts(run_cli, env) -> dict[str, int]:
    done = run_cli(env, "stats", "--tenant", "acme")
    assert done.returncode == 0, done.stderr
    return parse_outcome_counts(done.stdout)


def audited(run_cli, env, limit: int) -> dict[str, list[str]]:
    """The audit trail of acme, per event: its outcomes ("delivered", "skipped:duplicate"...)
    for the Braze connector, oldest first."""
    done = run_cli(env, "audit", "acme", "--json", "--limit", str(limit), timeout=300)
    assert done.returncode == 0, done.stderr
    entries = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(entries) < limit, "the audit trail holds more than was read"
    outcomes: dict[str, list[str]] = defaultdict(list)
    for entry in reversed(entries):
        assert entry["connector_id"] == "braze", entry
        name = entry["outcome"] + (f":{entry['reason']}" if entry["reason"] else "")
        outcomes[entry["event_key"]].append(name)
    return outcomes


def log_lines(worker) -> list[dict]:
    lines = []
    for line in worker.log().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"event": line, "level": "not json"})
    return lines


# -- 1. a worker killed with a queue of batches in flight ------------------------------------------


def crash_load(users: list[str]) -> tuple[list[dict], dict[str, int]]:
    """The crash test's events in the order they are enqueued, and for each user how many
    messages carry its two events (2: apart, 1: in one batch, coalesced).

    Users come in blocks of 50. One user in ten has its older and newer events next to each
    other, so in one message. For the others the block's first events come two blocks
    before its second events, so about two messages later: newest wins across batches,
    whichever runs first. For half the users of each kind the newer event comes first."""
    stream: list[dict] = []
    later: list[list[dict]] = []
    for start in range(0, len(users), 50):
        seconds = []
        for number, user in enumerate(users[start : start + 50], start=start):
            older, newer = older_and_newer(user)
            first, second = (older, newer) if number % 2 else (newer, older)
            if number % 10 == 0:
                stream += [first, second]
            else:
                stream.append(first)
                seconds.append(second)
        later.append(seconds)
        if len(later) > 2:
            stream += later.pop(0)
    for seconds in later:
        stream += seconds
    messages: dict[str, set[int]] = defaultdict(set)
    for position, event in enumerate(stream):
        messages[user_of_event(event)].add(position // MAX_BATCH)
    return stream, {user: len(found) for user, found in messages.items()}


def waiting_for_a_retry(worker) -> tuple[set[str], set[str]]:
    """The task ids a worker scheduled a retry of, and the events those retries carry that
    it did not see end (delivered or skipped) afterwards."""
    tasks, events, ended = set(), set(), set()
    for line in log_lines(worker):
        if line.get("event") == "retry scheduled":
            tasks.add(line["task_id"])
            events.add(line["event_key"])
            ended.discard(line["event_key"])
        elif line.get("outcome") in ("delivered", "skipped"):
            ended.add(line["event_key"])
    return tasks, events - ended


def test_worker_killed_with_a_queue_in_flight_loses_nothing_and_the_newest_value_wins(
    prefsync_env, fake_destinations, redis_server, start_worker, run_cli
):
    fake = fake_destinations
    concurrency = 2
    failures = 2 * concurrency
    users = [f"crash-{n}@example.com" for n in range(1000 * SCALE)]
    events, messages_per_user = crash_load(users)  # 2,000 events, 20 messages
    apart = [u for u in users if messages_per_user[u] == 2]
    together = [u for u in users if messages_per_user[u] == 1]
    assert len(apart) >= len(users) * 8 // 10 and len(together) >= len(users) // 20
    env = {
        **prefsync_env,
        # A retry's first step of 2.5 s: 503s just before the kill leave retries held,
        # unacknowledged, in the dying worker's memory.
        "PREFSYNC_RETRY_COUNTDOWNS": "2.5,0.5,0.5,0.5,0.5",
        # A soft limit (3 s) no attempt meets on a loaded machine.
        "PREFSYNC_TASK_TIME_LIMIT": "8",
        # What the killed worker held comes back after this: far less than the time the
        # last events wait in the queue, which the outbox must not take for lost.
        "PREFSYNC_VISIBILITY_TIMEOUT": "12",
    }
    put_connector(run_cli, env, braze_config(fake.url))
    # A call of 50 users takes a moment, so the kill finds the load well under way.
    fake.set_delay("braze", 0.2)
    worker = start_worker(env, concurrency=concurrency)
    enqueue_seconds = enqueue_all(run_cli, env, events)

    wait_until(
        lambda: len(braze_sends(fake)) >= len(users) // 4,
        timeout=60 * SCALE,
        message=lambda: f"only {len(braze_sends(fake))} users reached",
    )
    # Each 503 stops a batch: its unanswered events wait for a retry in the worker.
    fake.fail_next("braze", failures, status=503)
    wait_until(
        lambda: len(waiting_for_a_retry(worker)[0]) >= failures,
        timeout=60,
        message=lambda: f"retries scheduled: {waiting_for_a_retry(worker)[0]}",
    )
    # Killed as the next call goes out: its answer (0.2 s away) never reaches the worker.
    before = len(fake.calls("braze"))
    wait_until(
        lambda: any(c.status == 201 for c in fake.calls("braze")[before:]),
        timeout=30,
        message="no call after the retries were scheduled",
    )
    worker.kill()
    killed_at = time.monotonic()
    _, retries_held = waiting_for_a_retry(worker)
    delivered_at_kill = outcome_counts(run_cli, env).get("delivered", 0)
    assert retries_held, "no retry was waiting when the worker died"
    assert delivered_at_kill < len(events) * 3 // 4, "most of the load had ended before the kill"

    start_worker(env, concurrency=concurrency)
    wait_until(
        lambda: not not_at_newest(fake, users),
        timeout=60 * SCALE + 60,
        message=lambda: f"{len(not_at_newest(fake, users))} users not at their newest state",
    )
    recovered_after = time.monotonic() - killed_at
    broker = redis_server.client()
    wait_until(
        lambda: broker.zcard("prefsync:outbox:due") == 0,
        timeout=30,
        message="tasks never ended (still in the outbox)",
    )

    # Newest wins: what reached Braze is only ever what an event says (or both coalesced),
    # and no user's newsletter opt-in arrived after their opt-out.
    objects = braze_objects(fake)
    assert set(objects) == set(users)
    allowed = [*BRAZE_BODIES, COALESCED]
    assert all(fields in allowed for found in objects.values() for fields in found)
    assert older_after_newer(fake) == {}
    assert all(found[-1].get("email_subscribe") != "opted_in" for found in objects.values())
    # Coalesced exactly when the two events shared a batch.
    assert all(fields == COALESCED for u in together for fields in objects[u])
    assert not any(COALESCED in objects[u] for u in apart)
    # The crash made older events go after newer ones enqueued after them: the retry of
    # the older found the newsletter owned by the newer, and sent product updates only.
    position = {event["parameters"]["entity"]["id"]: n for n, event in enumerate(events)}
    overtaken = [
        u
        for u in apart
        if position[f"a-{u}"] < position[f"b-{u}"] and objects[u][:2] == [NEWER, OLDER_REST]
    ]
    assert overtaken, "no older event went after its newer one: nothing crossed batches"
    # Nothing lost: each message that carried a user's events sent that user once. More is
    # a re-send of a call that was between its request and its "done" marker at the kill:
    # one call per pool process, of up to BRAZE_BATCH users.
    sends = braze_sends(fake)
    missing = {u: sends[u] for u in users if sends[u] < messages_per_user[u]}
    assert missing == {}, missing
    sent_again = sum(sends[u] - messages_per_user[u] for u in users)
    assert sent_again <= concurrency * BRAZE_BATCH, sent_again
    assert dead_letters(run_cli, env) == []

    # The proof: every event has an outcome in the audit trail, delivered at most once.
    # An event whose call was answered just before the kill, with its "done" marker set but
    # its outcome not yet recorded, is skipped as a duplicate when its message comes back:
    # at most the events of one call per pool process (up to two a user, coalesced).
    trail = audited(run_cli, env, limit=3 * len(events))
    assert len(trail) == len(events)
    assert all(set(found) <= {"delivered", "skipped:duplicate"} for found in trail.values())
    assert all(found.count("delivered") <= 1 for found in trail.values())
    only_duplicate = [key for key, found in trail.items() if "delivered" not in found]
    assert len(only_duplicate) <= concurrency * 2 * BRAZE_BATCH, len(only_duplicate)
    counts = outcome_counts(run_cli, env)
    # No event is stale: the older one always owns product updates, the newer the newsletter.
    assert counts.get("delivered", 0) == len(events) - len(only_duplicate), counts
    assert "skipped:stale" not in counts and "dead_lettered" not in counts, counts
    report(
        f"crash: {len(events)} events ({len(users)} users: {len(apart)} with their older and "
        f"newer events in different messages, {len(together)} in one) enqueued by the CLI as "
        f"{messages_for(events)} messages in {enqueue_seconds:.1f} s; killed with "
        f"{len(events) - delivered_at_kill} events not yet delivered and {len(retries_held)} "
        f"waiting for a retry; all at their newest value {recovered_after:.1f} s after the "
        f"kill, {len(overtaken)} older events sent after the newer one enqueued after them; "
        f"{sent_again} users sent again (bound {concurrency * BRAZE_BATCH}); "
        f"{len(only_duplicate)} events delivered but audited only as duplicates; "
        f"{counts.get('skipped:duplicate', 0)} copies skipped as duplicates"
    )


# -- 2. Redis restarted under load; producers while Redis is down or hung --------------------------

PRODUCER = """
import json, sys, time
from worker.producer import BrokerUnavailable
from worker.producer import enqueue_many
events = [json.loads(line) for line in sys.stdin]
size, pace = int(sys.argv[1]), float(sys.argv[2])
for start in range(0, len(events), size):
    batch = events[start:start + size]
    keys = [event["parameters"]["entity"]["id"] for event in batch]
    started = time.monotonic()
    while True:
        try:
            enqueue_many(batch)
        except BrokerUnavailable as exc:
            print("refused", keys[0], round(time.monotonic() - started, 2), exc, flush=True)
            time.sleep(0.2)
        else:
            for key in keys:
                print("ok", key, round(time.monotonic() - started, 2), flush=True)
            break
    time.sleep(pace)
"""


class Producer:
    """A producer process on the Python API, ``size`` events a call of ``enqueue_many`` (one
    message), as a webhook receiver that buffers a little would be: it keeps a batch and
    tries again until enqueue_many acknowledges it. Each line it prints says "ok" (one per
    event) or "refused" (one per refused call, naming its first event), the event and the
    seconds since the batch's first try."""

    def __init__(self, env: dict[str, str], events: list[dict], size: int, pace: float) -> None:
        self.lines: list[list[str]] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(size), str(pace)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.proc.stdin.write(jsonl(events))
        self.proc.stdin.close()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n").split(" ", 3))

    def seen(self, outcome: str) -> list[list[str]]:
        return [line for line in list(self.lines) if line[0] == outcome]

    def wait(self, timeout: float) -> None:
        self.proc.wait(timeout)
        self._reader.join(5)
        assert self.proc.returncode == 0, self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def next_attempt_after(worker, since: float) -> dict[str, float | None]:
    """For each retry the worker scheduled (task id and attempt), the seconds from ``since``
    (epoch) to the first log line of the next attempt; None if it never ran."""
    after: dict[tuple[str, int], float | None] = {}
    for line in log_lines(worker):
        task_id, attempt = line.get("task_id"), line.get("attempt")
        if task_id is None or attempt is None:
            continue
        if line["event"] == "retry scheduled":
            after.setdefault((task_id, attempt), None)
        elif (task_id, attempt - 1) in after and after[task_id, attempt - 1] is None:
            at = datetime.fromisoformat(line["timestamp"]).timestamp()
            after[task_id, attempt - 1] = at - since
    return {f"{task_id} attempt {attempt}": s for (task_id, attempt), s in after.items()}


def test_redis_restarted_under_load_delivers_every_acknowledged_event_and_producers_fail_fast(
    prefsync_env, fake_destinations, redis_server, start_worker, run_cli
):
    fake = fake_destinations
    # Every write on disk before Redis answers: a restart keeps all it acknowledged.
    redis_server.stop()
    redis_server.start(["--appendonly", "yes", "--appendfsync", "always"])
    down_for = 1.0 * SCALE
    # The worker's broker connection comes back within 2 s of Redis (12 s for a 10 s
    # outage); the soft time limit must be longer, or the worker fires the time limits of a
    # delivery the crash cut off as it reconnects (see the xfail test at the end of this file).
    time_limit = 8 if not CHAOS else 30
    # What a worker took and never settled comes back after this: the unacknowledged message,
    # or the outbox's copy.
    visibility = time_limit + 5
    env = {
        **prefsync_env,
        "PREFSYNC_RETRY_COUNTDOWNS": "0.2,0.5,1,2,3",
        "PREFSYNC_TASK_TIME_LIMIT": str(time_limit),
        "PREFSYNC_VISIBILITY_TIMEOUT": str(visibility),
    }
    put_connector(run_cli, env, braze_config(fake.url))
    concurrency = 2
    worker = start_worker(env, concurrency=concurrency)
    users = [f"redis-{n}@example.com" for n in range(150 * SCALE)]
    events = [
        consent_event(f"e-{u}", u, "2026-11-20T09:00:00Z", {"newsletter": True}) for u in users
    ]
    batch = 5  # events a message, so users a Braze call
    # A message every 20 ms or so keeps the worker busy when Redis dies.
    producer = Producer(env, events, size=batch, pace=0.02)
    try:
        wait_until(
            lambda: len(producer.seen("ok")) >= len(events) // 3,
            timeout=60,
            message=lambda: f"only {len(producer.lines)} enqueued",
        )
        redis_server.kill()  # a crash: only what the append-only file holds survives
        down_at = time.monotonic()
        acknowledged_before = len(producer.seen("ok"))

        # Meanwhile a producer gets a clear error at once, not a hang nor a traceback, and
        # not the password of the URL.
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
        refused = run_cli(
            {**env, "PREFSYNC_REDIS_URL": url}, "enqueue", "-", input=jsonl(events[:2])
        )
        refused_in = time.monotonic() - down_at
        assert refused.returncode == 2, refused
        where = f"redis://:***@127.0.0.1:{redis_server.port}/0"
        assert refused.stderr.startswith(f"error: cannot reach Redis (the broker) at {where}: "), (
            refused.stderr
        )
        assert "line 1 and all after it were not enqueued" in refused.stderr
        assert refused.stdout.strip() == "enqueued 0 event(s), 0 invalid"
        assert "Traceback" not in refused.stderr
        assert REDIS_PASSWORD not in refused.stdout + refused.stderr
        assert refused_in < 15

        time.sleep(max(0.0, down_for - (time.monotonic() - down_at)))
        redis_server.start()
        up_at, up_wall = time.monotonic(), time.time()
        producer.wait(timeout=120 * SCALE)
    finally:
        producer.kill()
    acknowledged = [line[1] for line in producer.seen("ok")]
    assert sorted(acknowledged) == sorted(f"e-{u}" for u in users)  # each once
    assert acknowledged_before < len(events) - 10, "the load ended before the restart"

    # Every event enqueue acknowledged reaches Braze.
    wait_until(
        lambda: set(braze_sends(fake)) == set(users),
        timeout=60 * SCALE,
        message=lambda: f"never delivered: {sorted(set(users) - set(braze_sends(fake)))[:10]}",
    )
    # The same worker process delivered again, and said so in its log: its main process
    # reconnected by itself (it used to crash, or hang, as Redis went away).
    assert worker.running
    logged = [line["event"] for line in log_lines(worker)]
    assert not any("Unrecoverable error" in text for text in logged)
    lost = next(n for n, text in enumerate(logged) if "Connection to broker lost" in text)
    where = f"@127.0.0.1:{redis_server.port}/0"  # kombu masks the password, if any, as **
    assert any(
        text.startswith("consumer: Cannot connect to redis://") and where in text
        for text in logged[lost:]
    )
    assert any(text.startswith("Connected to redis://") and where in text for text in logged[lost:])
    # Redis errors while a task wrote its retry failed no task ("raised unexpected"): the
    # writes waited for Redis, so each delivery the crash cut off ran again soon after Redis
    # was back, not once the visibility timeout brought its message back (or the outbox its
    # copy), `visibility - down_for` after. (A message the worker had taken but not yet
    # started is left to that timeout.)
    failed = [line["event"] for line in log_lines(worker) if "raised unexpected" in line["event"]]
    assert failed == []
    retried = next_attempt_after(worker, up_wall)
    late = {retry: s for retry, s in retried.items() if s is None or s > visibility / 2}
    assert late == {}, f"retries run late (s after Redis was back): {late}"
    last_retry = max((s for s in retried.values() if s is not None), default=0.0)
    broker = redis_server.client()
    wait_until(
        lambda: broker.zcard("prefsync:outbox:due") == 0,
        timeout=30 * SCALE,
        message="tasks never ended (still in the outbox)",
    )
    assert dead_letters(run_cli, env) == []
    # A call whose request went out as Redis died could not be marked done: sent again,
    # one call per pool process, of one message's users.
    sends = braze_sends(fake)
    sent_again = sum(n - 1 for n in sends.values())
    assert sent_again <= concurrency * batch, sent_again
    # Each event recorded once as delivered; a copy (a producer's retry of a batch that had
    # reached Redis, a message put back) is skipped as a duplicate.
    counts = outcome_counts(run_cli, env)
    delivered, duplicates = counts.get("delivered", 0), counts.get("skipped:duplicate", 0)
    assert delivered <= len(events) <= delivered + duplicates, counts
    assert set(counts) <= {"delivered", "skipped", "skipped:duplicate"}, counts
    first_after = min(c.at for c in fake.calls("braze") if c.at >= up_wall) - up_wall
    longest = max(float(line[2]) for line in producer.seen("ok"))
    report(
        f"redis restart: all {len(events)} events acknowledged ({acknowledged_before} before "
        f"the crash; {batch} a message) and delivered; Redis down {up_at - down_at:.1f} s, "
        f"{len(producer.seen('refused'))} enqueue calls refused meanwhile, longest wait for an "
        f"acknowledgement {longest:.1f} s; the same worker "
        f"delivered again {first_after:.1f} s after Redis was back; {len(retried)} attempt(s) "
        f"cut off by the crash retried, at most {last_retry:.1f} s after; {sent_again} users sent "
        f"again; {len(events) - delivered} events audited only as duplicates; "
        f"the CLI was refused in {refused_in:.1f} s"
    )


@pytest.fixture
def unanswering_redis() -> Iterator[int]:
    """A port that takes connections and never answers, like a hung Redis or a black hole."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def test_enqueue_to_a_redis_that_never_answers_fails_in_bounded_time(
    prefsync_env, unanswering_redis, run_cli
):
    env = {
        **prefsync_env,
        "PREFSYNC_REDIS_URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:{unanswering_redis}/0",
    }
    event = consent_event("e-hung", "u-hung", "2026-11-20T09:00:00Z", {"newsletter": True})

    started = time.monotonic()
    refused = run_cli(env, "enqueue", "-", input=json.dumps(event), timeout=60)
    took = time.monotonic() - started

    assert refused.returncode == 2, refused
    assert refused.stderr.startswith(
        f"error: cannot reach Redis (the broker) at redis://:***@127.0.0.1:{unanswering_redis}/0:"
    ), refused.stderr
    assert "the event was not enqueued" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert REDIS_PASSWORD not in refused.stdout + refused.stderr
    # Bounded by the 10 s socket timeout, plus the command's start on a loaded machine.
    assert took < 20
    report(f"hung redis: enqueue gave up after {took:.1f} s")


# -- 3. a 429 storm --------------------------------------------------------------------------------


def test_a_429_storm_is_waited_out_as_the_reset_headers_ask_and_everything_is_delivered(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    storm = 4.0 * (2 if CHAOS else 1)
    env = {
        **prefsync_env,
        # Long enough to honour the whole storm: the reset is never cut short.
        "PREFSYNC_RATE_LIMIT_MAX_WAIT": str(storm + 2),
        "PREFSYNC_VISIBILITY_TIMEOUT": str(int(storm) + 12),
        # Braze paced at 3 calls a second (Brevo: 10): both destinations still have calls to
        # make when the storm breaks.
        "PREFSYNC_RATE_LIMITS": json.dumps({"braze": 3}),
    }
    put_connector(run_cli, env, braze_config(fake.url))
    put_connector(run_cli, env, brevo_config())
    users = [f"storm-{n}@example.com" for n in range(30 * SCALE)]
    events = [
        consent_event(
            f"e-{u}", u, "2026-11-20T09:00:00Z", {"newsletter": True, "product_updates": True}
        )
        for u in users
    ]
    # Messages of 5 events: a Braze call of 5 users, 5 Brevo calls. More messages than pool
    # processes, so only the account's hold keeps the next ones from meeting the storm.
    batch = 5
    concurrency = 2
    start_worker(env, concurrency=concurrency)
    producer = Producer(env, events, size=batch, pace=0)
    try:
        producer.wait(timeout=60)
    finally:
        producer.kill()
    assert len(producer.seen("ok")) == len(events)

    def delivered(service: str, status: int) -> set[str]:
        return {u for c in fake.calls(service) if c.status == status for u in users_of(c)}

    # The storm breaks once deliveries flow to both, with most of them still to come.
    wait_until(
        lambda: delivered("braze", 201) and delivered("brevo", 204),
        timeout=30 * SCALE,
        message="nothing was delivered",
    )
    fake.throttle("braze", storm)
    fake.throttle("brevo", storm)
    storm_ends = time.time() + storm

    wait_until(
        lambda: delivered("braze", 201) == set(users) == delivered("brevo", 204),
        timeout=60 * SCALE,
        message=lambda: (
            f"braze {len(delivered('braze', 201))}, brevo {len(delivered('brevo', 204))} "
            f"of {len(users)}; dlq {dead_letters(run_cli, env)[:3]}"
        ),
    )
    all_delivered_after = time.time() - storm_ends

    # Each user's calls to one service are the attempts of one delivery (a Braze call holds
    # several users): after a 429, the next attempt must not come before the reset that 429
    # named.
    margins = []
    for service in ("braze", "brevo"):
        attempts: dict[str, list] = defaultdict(list)
        for call in fake.calls(service):
            for user in users_of(call):
                attempts[user].append(call)
        assert set(attempts) == set(users)
        for user, calls in attempts.items():
            for answered, following in pairwise(calls):
                assert answered.status == 429, (service, user, [c.status for c in calls])
                if service == "braze":
                    reset_at = float(answered.answer_headers["X-RateLimit-Reset"])
                else:
                    reset_at = answered.at + float(answered.answer_headers["x-sib-ratelimit-reset"])
                margins.append(following.at - reset_at)
                assert following.at >= reset_at, (service, user, following.at - reset_at)
            assert calls[-1].status in (201, 204)
        # The first 429 holds the whole account until its reset, and stops the batch it
        # met: only calls already on their way (one per other pool process) meet the storm.
        met_the_storm = sum(c.status == 429 for c in fake.calls(service))
        assert 1 <= met_the_storm <= concurrency, (service, met_the_storm)
    assert all(len(c.body["attributes"]) == batch for c in fake.calls("braze"))
    assert dead_letters(run_cli, env) == []
    assert outcome_counts(run_cli, env) == {"delivered": 2 * len(users)}
    held_back = {
        service: len({u for c in fake.calls(service) if c.status == 429 for u in users_of(c)})
        for service in ("braze", "brevo")
    }
    report(
        f"429 storm: {len(users)} users x 2 destinations, {batch} a message (a Braze call); "
        f"{storm:.0f} s storm met by {sum(c.status == 429 for c in fake.calls())} calls "
        f"(Braze {held_back['braze']} users, Brevo {held_back['brevo']}); earliest retry "
        f"{min(margins) * 1000:.0f} ms after its reset; all delivered "
        f"{all_delivered_after:.1f} s after the storm"
    )


# -- 4. a destination slower than the HTTP timeout -------------------------------------------------

SLOW = {
    "PREFSYNC_HTTP_TIMEOUT": "1",
    # A soft limit (5 s) well above the HTTP timeout: the timeout ends a slow attempt.
    "PREFSYNC_TASK_TIME_LIMIT": "10",
    "PREFSYNC_VISIBILITY_TIMEOUT": "20",
}
# Each slow attempt holds a pool process for the whole timeout: more of them for more events.
SLOW_CONCURRENCY = 8 if CHAOS else 4


def older_and_newer_sent(fake) -> tuple[set[str], set[str]]:
    """The users whose older event (product updates), and whose newer event (newsletter
    opt-out), reached Braze so far."""
    older, newer = set(), set()
    for obj in braze_attributes(fake.calls("braze")):
        fields = braze_fields(obj)
        if PRODUCT_UPDATES in fields:
            older.add(obj["external_id"])
        if fields.get("email_subscribe") == "unsubscribed":
            newer.add(obj["external_id"])
    return older, newer


def test_a_destination_slower_than_the_timeout_for_a_while_gets_everything_once_it_is_fast(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    # Attempts at +0, 0.5, 1.5, 3.5, 6.5 and 10.5 s (three times that for chaos): room for a
    # slow spell in which every attempt takes a pool process for the whole HTTP timeout.
    stretch = 3 if CHAOS else 1
    countdowns = ",".join(str(step * stretch) for step in (0.5, 1, 2, 3, 4))
    env = {
        **prefsync_env,
        **SLOW,
        "PREFSYNC_RETRY_COUNTDOWNS": countdowns,
        "PREFSYNC_VISIBILITY_TIMEOUT": str(20 + 5 * stretch),  # > longest step + time limit
    }
    put_connector(run_cli, env, braze_config(fake.url))
    users = [f"slow-{n}@example.com" for n in range(6 * SCALE)]
    # Two messages, each one Braze call of every user: one with each user's older event
    # (newer for half of them), then one with the other event. While one holds the users,
    # the other waits (deferred), then goes out after it, so newest wins across batches.
    firsts, seconds = [], []
    for number, user in enumerate(users):
        older, newer = older_and_newer(user)
        firsts.append(newer if number % 2 else older)
        seconds.append(older if number % 2 else newer)
    events = firsts + seconds
    # Each answer comes after the worker gave up waiting, but the destination applied it.
    fake.set_delay("braze", 1.5)
    start_worker(env, concurrency=SLOW_CONCURRENCY)
    enqueue_all(run_cli, env, firsts)
    enqueue_all(run_cli, env, seconds)

    # Slow until every event reached Braze at least once, in a call that timed out.
    wait_until(
        lambda: older_and_newer_sent(fake) == (set(users), set(users)),
        timeout=60 * SCALE,
        message=lambda: f"{len(fake.calls('braze'))} calls during the slow spell",
    )
    fake.set_delay("braze", 0)
    fast_from = time.time()
    slow_calls = len(fake.calls("braze"))

    def ended() -> bool:
        counts = outcome_counts(run_cli, env)
        return counts.get("delivered", 0) + counts.get("dead_lettered", 0) >= len(events)

    wait_until(ended, timeout=60 * SCALE, message=lambda: outcome_counts(run_cli, env))
    assert dead_letters(run_cli, env) == []
    assert outcome_counts(run_cli, env) == {"delivered": len(events)}
    assert not not_at_newest(fake, users)
    # Re-sends only ever repeat what an event says (never an older value over a newer one,
    # and never both events at once: they travel apart), and everyone got both events.
    objects = braze_objects(fake)
    assert all(fields in BRAZE_BODIES for found in objects.values() for fields in found)
    assert older_after_newer(fake) == {}
    sends = braze_sends(fake)
    assert min(sends.values()) >= 2
    calls = fake.calls("braze")
    assert max(len(c.body["attributes"]) for c in calls) == min(len(users), BRAZE_BATCH)
    report(
        f"slow destination: {len(events)} events in 2 messages ({len(users)} users a call), "
        f"{slow_calls} calls timed out while slow, {sum(c.at >= fast_from for c in calls)} "
        f"after; {sum(n - 2 for n in sends.values())} re-sends to a user of an event "
        f"already applied"
    )


def test_a_destination_slower_than_the_timeout_past_the_window_dead_letters_then_replay_delivers(
    prefsync_env, fake_destinations, start_worker, run_cli
):
    fake = fake_destinations
    env = {**prefsync_env, **SLOW}  # attempts at +0, 0.1, 0.4, 1.0, 1.9, 3.0 s, each 1 s long
    put_connector(run_cli, env, braze_config(fake.url))
    users = [f"slower-{n}@example.com" for n in range(4 * SCALE)]
    events = [
        consent_event(f"e-{u}", u, "2026-11-20T09:00:00Z", {"newsletter": False}) for u in users
    ]
    fake.set_delay("braze", 1.5)
    start_worker(env, concurrency=SLOW_CONCURRENCY)
    enqueue_all(run_cli, env, events)  # one message, so each attempt is one call of them all

    wait_until(
        lambda: len(dead_letters(run_cli, env)) == len(events),
        timeout=60 * SCALE,
        message=lambda: f"{len(dead_letters(run_cli, env))} of {len(events)} dead-lettered",
    )
    # Each event its own entry, each after its 6 attempts.
    entries = dead_letters(run_cli, env)
    assert all("timed out after 1.0s" in line for line in entries)
    assert sorted(line.split("\t")[3] for line in entries) == sorted(users)
    assert outcome_counts(run_cli, env) == {"dead_lettered": len(events)}
    calls_while_slow = fake.calls("braze")
    # Every attempt reached it, none answered in time: 6 calls, each carrying every user
    # (they fit one call).
    assert len(users) <= BRAZE_BATCH
    assert len(calls_while_slow) == 6
    assert all(sorted(users_of(c)) == sorted(users) for c in calls_while_slow)

    fake.set_delay("braze", 0)
    replayed = run_cli(env, "dlq", "replay", "--all")
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed {len(events)} dead letter(s), 0 failed" in replayed.stdout
    wait_until(
        lambda: outcome_counts(run_cli, env).get("delivered") == len(events),
        timeout=30 * SCALE,
        message=lambda: outcome_counts(run_cli, env),
    )
    assert dead_letters(run_cli, env) == []
    replayed_calls = fake.calls("braze")[len(calls_while_slow) :]
    assert sorted(u for c in replayed_calls for u in users_of(c)) == sorted(users)  # one each
    assert all(
        braze_fields(obj) == {"email_subscribe": "unsubscribed"}
        for obj in braze_attributes(replayed_calls)
    )
    report(
        f"slower than the window: {len(events)} events (one message) dead-lettered after 6 "
        f"timed-out calls of {len(users)} users each, one entry an event; all delivered by "
        f"one replay ({len(replayed_calls)} calls)"
    )


# -- a backlog older than the visibility timeout; a delivery cut off by a Redis outage -----------


def queued_event_ids(broker) -> list[str]:
    """The ids of the events the messages waiting in Celery's queue carry, sorted."""
    ids = []
    for raw in broker.lrange("celery", 0, -1):
        message = json.loads(raw)
        assert message["properties"]["body_encoding"] == "base64", message["properties"]
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids += [payload["parameters"]["entity"]["id"] for payload in args[0]]
    return sorted(ids)


def test_a_backlog_older_than_the_visibility_timeout_is_not_copied_but_lost_messages_are(
    prefsync_env, fake_destinations, redis_server, start_worker, run_cli
):
    # A worker that consumes another queue sweeps the outbox but takes nothing, as when
    # every worker is busy with a backlog: the tasks are overdue but still queued.
    env = {**prefsync_env, **QUICK_RECOVERY}
    visibility = int(QUICK_RECOVERY["PREFSYNC_VISIBILITY_TIMEOUT"])
    put_connector(run_cli, env, braze_config(fake_destinations.url))
    events = [
        consent_event(f"e-{n}", f"queued-{n}", "2026-11-20T09:00:00Z", {"newsletter": True})
        for n in range(2 * MAX_BATCH + 50)
    ]
    ids = sorted(event["parameters"]["entity"]["id"] for event in events)
    messages = messages_for(events)  # 3: 100, 100 and 50 events
    enqueue_all(run_cli, env, events)
    broker = redis_server.client()
    assert broker.llen("celery") == messages
    assert queued_event_ids(broker) == ids
    worker = start_worker(env, extra_args=["-Q", "elsewhere"])

    # Nothing happens when it works: leave the sweep (every second) two rounds past due.
    time.sleep(2 * visibility + 1)
    assert broker.llen("celery") == messages
    assert "published again" not in worker.log()

    # Once the queue is empty, what is still unfinished was lost, and comes back, each
    # message once and whole.
    broker.delete("celery")
    wait_until(
        lambda: broker.llen("celery") == messages,
        timeout=2 * visibility + 10,
        message=lambda: f"{broker.llen('celery')} of {messages} published again",
    )
    assert worker.log().count("published again") == messages
    assert queued_event_ids(broker) == ids


def test_a_delivery_cut_off_by_a_redis_outage_is_not_dead_lettered(
    prefsync_env, fake_destinations, redis_server, start_worker, run_cli
):
    # Soft limit 1 s, hard 6 s; the worker tries to reconnect at once, then 2 s and 6 s
    # after the loss, so an outage of 3 s outlasts the soft limit: the worker fires the
    # task's time limits as it reconnects, before it reads the task's result. That used to
    # corrupt the pipe the result came by and kill the worker's main process (see
    # worker.queue.pool). In production: 55 s and 60 s against attempts 0, 2, 6, 12, 20, 30, 42,
    # 56 s after the loss: 42 s or more.
    fake = fake_destinations
    redis_server.stop()
    redis_server.start(["--appendonly", "yes", "--appendfsync", "always"])
    env = {
        **prefsync_env,
        "PREFSYNC_TASK_TIME_LIMIT": "6",
        "PREFSYNC_HTTP_TIMEOUT": "0.5",  # fits the 1 s soft limit with a wait for Redis
        "PREFSYNC_VISIBILITY_TIMEOUT": "12",
    }
    put_connector(run_cli, env, braze_config(fake.url))
    fake.set_delay("braze", 0.3)  # the request is on its way when Redis dies
    worker = start_worker(env)
    enqueue_all(
        run_cli,
        env,
        [consent_event("e-cut", "u-cut", "2026-11-20T09:00:00Z", {"newsletter": True})],
    )
    wait_until(lambda: fake.calls("braze"), timeout=30)
    redis_server.kill()
    time.sleep(3)  # the outage
    redis_server.start()

    wait_until(
        lambda: outcome_counts(run_cli, env),
        timeout=30,
        message="the delivery never ended",
    )
    assert dead_letters(run_cli, env) == []
    # Delivered once; the message the crash cut off may come back (put back, or after the
    # visibility timeout), and its copy is skipped as a duplicate.
    counts = outcome_counts(run_cli, env)
    assert counts.get("delivered") == 1, counts
    assert set(counts) <= {"delivered", "skipped", "skipped:duplicate"}, counts
    # The same worker process delivered it: its main process survived the time limits.
    assert worker.running
    assert "Unrecoverable error" not in worker.log()
