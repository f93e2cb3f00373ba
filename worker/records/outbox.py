"""Unfinished tasks, kept in Redis until they end, so that the broker cannot lose one.

Celery's Redis transport takes a message off its queue (BRPOP) before it records it as
unacknowledged: a worker killed in between loses the message for good (seen in the crash
test: one event in 200). So every prefsync task is written here before it is published, and
removed when it ends (delivered, skipped or dead-lettered). Whatever has not ended, nor been
rescheduled, by its due time (publish time + the broker's visibility timeout, by which
Redis would have handed an unacknowledged message out again) is published again by the
sweep that workers run, once no message waits in its queue (see ``sweep``), into that same
queue (its lane's: worker.queue.lanes). A copy costs nothing: idempotency absorbs it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline

ENTRIES = "prefsync:outbox"  # task id -> {"name", "args", "kwargs"} (JSON)
DUE = "prefsync:outbox:due"  # task id -> when it counts as lost (epoch seconds)
SWEEPER = "prefsync:outbox:sweeper"  # one sweep at a time across workers
# A sweep of up to 1,000 entries takes well under this; should a worker die mid-sweep, the
# others take over after it rather than after a whole visibility timeout.
SWEEPER_EXPIRY = 60

Publish = Callable[[str, str, list[Any], dict[str, Any]], None]


class Outbox:
    def __init__(self, client: redis.Redis, grace: float) -> None:
        self.redis = client
        self.grace = grace

    def add(
        self,
        task_id: str,
        name: str,
        args: list[Any],
        kwargs: dict[str, Any],
        now: float,
        wait: float = 0.0,
    ) -> None:
        """A task about to be published, to run in ``wait`` seconds."""
        entry = json.dumps({"name": name, "args": args, "kwargs": kwargs})
        # HSETNX: the producer's Redis user may add an entry, never change one (its only
        # reuse of a task id, a parked bulk message fed again, writes the same entry).
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(ENTRIES, task_id, entry)
            pipe.zadd(DUE, {task_id: now + wait + self.grace})
            pipe.execute()

    def entry(self, task_id: str) -> dict[str, Any] | None:
        """The task as last written: {"name", "args", "kwargs"}; None once it ended."""
        raw = self.redis.hget(ENTRIES, task_id)
        return None if raw is None else json.loads(raw)

    def rescheduled(
        self,
        task_id: str,
        args: list[Any],
        kwargs: dict[str, Any],
        now: float,
        wait: float,
        also: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """A retry was published: it carries new args (the events left of a batch) and
        kwargs (the attempts), and may wait ``wait`` seconds. ``also`` adds commands to the
        transaction (counting the retry)."""
        written = self.entry(task_id)
        if written is None:  # published before the outbox existed, or already swept and ended
            return
        entry = {**written, "args": args, "kwargs": kwargs}
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(ENTRIES, task_id, json.dumps(entry))
            pipe.zadd(DUE, {task_id: now + wait + self.grace})
            if also is not None:
                also(pipe)
            pipe.execute()

    def done(self, task_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(ENTRIES, task_id)
            pipe.zrem(DUE, task_id)
            pipe.execute()

    def pending(self) -> int:
        return int(self.redis.zcard(DUE))

    def sweep(
        self,
        now: float,
        publish: Publish,
        queued: int | Callable[[dict[str, Any]], int] = 0,
        limit: int = 1000,
    ) -> int:
        """Publish again every task overdue at ``now`` (at most ``limit``); returns how many
        were published. Skips the round when another worker is sweeping.

        ``queued`` is how many messages still wait in the broker's queue, or, given an
        entry ({"name", "args", "kwargs"}), in the queue that entry's task travels in (each
        lane has its queues: worker.queue.lanes). While any do, an overdue task may be one of them
        rather than lost — a backlog older than the visibility timeout — and copying it
        would grow the backlog it is stuck in. So it is not published then; a task the
        broker did lose is published once its queue has drained."""
        waiting = queued if callable(queued) else lambda _: queued
        if not self.redis.set(SWEEPER, 1, nx=True, ex=SWEEPER_EXPIRY):
            return 0
        published = 0
        try:
            for raw_id in self.redis.zrangebyscore(DUE, "-inf", now, start=0, num=limit):
                task_id = raw_id.decode()
                raw = self.redis.hget(ENTRIES, task_id)
                if raw is None:  # ended between the two reads
                    self.redis.zrem(DUE, task_id)
                    continue
                entry = json.loads(raw)
                if waiting(entry) > 0:
                    continue
                publish(task_id, entry["name"], entry["args"], entry["kwargs"])
                self.redis.zadd(DUE, {task_id: now + self.grace}, xx=True)
                published += 1
            return published
        finally:
            self.redis.delete(SWEEPER)
