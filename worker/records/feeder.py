"""Bulk loads shared fairly between tenants: parked per tenant, fed in turn.

A bulk load is not published straight into the bulk queues, where a tenant's 200,000 events
would sit in front of every other tenant's. Its messages (up to 100 events each) are parked
in Redis, one list per tenant, and a feeder moves them into the bulk lane one tenant's
message at a time, round-robin over the tenants that have some parked, while fewer than
``QUEUED`` bulk messages wait in the bulk queues. A tenant who parks a load while another's
is being fed has its first message fed at the next turn: it waits behind at most ``QUEUED``
messages, not behind the other load.

At least once: a message leaves its list only after it was published (outbox, then broker:
worker.queue.publishing.publish), and only if it is still the list's first (a script checks), so a
feeder that dies in between leaves it parked, to be published again, a duplicate that
idempotency absorbs. A message keeps its task id from parking on: its copies share one
outbox entry.

Every worker runs the feeder every ``INTERVAL`` (worker.queue.sweeps.BulkFeeding); a lock in Redis
lets one feed at a time.

A tenant's list is named by ``keys.key`` (``prefsync:bulk:["acme"]``), so no tenant id can
name the feeder's own keys: the release before this one used ``prefsync:bulk:acme``, where
a tenant called ``tenants`` parked into the rotation itself. Lists parked under that name
are fed first (they are older) until empty; nothing is parked there any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import redis

from worker.records.keys import key
from worker.records.scripts import Scripts

PREFIX = "prefsync:bulk:"
TENANTS = "prefsync:bulk:tenants"  # zset tenant -> turn of its last feed (lowest goes next)
TURN = "prefsync:bulk:turn"  # the turn counter
FEEDER = "prefsync:bulk:feeder"  # one feeder at a time
FEEDER_EXPIRY = 10  # seconds: a feeder that died holds the others off no longer

QUEUED = 20  # bulk messages waiting in the bulk queues, at most, before more are fed
INTERVAL = 0.1  # seconds between feeding rounds

# (task id, task name, args, kwargs)
Message = tuple[str, str, list[Any], dict[str, Any]]
Publish = Callable[[str, str, list[Any], dict[str, Any]], None]


def parked_key(tenant: str) -> str:
    """The list of the tenant's parked messages, oldest first."""
    return key("bulk", tenant)


def older_key(tenant: str) -> str:
    """Where the release before this one parked the tenant's messages. A tenant whose name
    made it one of the feeder's keys, or a list of this release's form, had no list of its
    own there: its key is then the tenant's own list, read once."""
    name = f"{PREFIX}{tenant}"
    if name in (TENANTS, TURN, FEEDER) or tenant.startswith("["):
        return parked_key(tenant)
    return name


class BulkFeeder:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.scripts = Scripts(client)

    def park(self, tenant: str, messages: Iterable[Message]) -> None:
        """Park a tenant's messages, in order, all or none. A tenant new to the rotation
        goes first."""
        encoded = [
            json.dumps({"id": task_id, "name": name, "args": args, "kwargs": kwargs})
            for task_id, name, args, kwargs in messages
        ]
        if not encoded:
            return
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.rpush(parked_key(tenant), *encoded)
            pipe.zadd(TENANTS, {tenant: 0}, nx=True)
            pipe.execute()

    def parked(self) -> dict[str, int]:
        """tenant -> messages parked."""
        tenants = [t.decode() for t in self.redis.zrange(TENANTS, 0, -1)]
        with self.redis.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.llen(parked_key(tenant))
                pipe.llen(older_key(tenant))
            lengths = pipe.execute()
        return {
            tenant: lengths[2 * n] + (lengths[2 * n + 1] if _has_older(tenant) else 0)
            for n, tenant in enumerate(tenants)
        }

    def feed(self, publish: Publish, queued: int) -> int:
        """Publish parked messages, a tenant's at a time in turn, until ``QUEUED`` bulk
        messages wait (``queued`` do now). Returns how many were published; 0 when another
        worker is feeding."""
        room = QUEUED - queued
        if room <= 0 or not self.redis.zcard(TENANTS):
            return 0
        if not self.redis.set(FEEDER, 1, nx=True, ex=FEEDER_EXPIRY):
            return 0
        fed = 0
        try:
            while fed < room:
                first = self.redis.zrange(TENANTS, 0, 0)
                if not first:
                    break
                tenant = first[0].decode()
                lists = [older_key(tenant), parked_key(tenant)]
                raw = self.redis.lindex(lists[0], 0)
                if raw is None:
                    lists.reverse()
                    raw = self.redis.lindex(lists[0], 0)
                if raw is not None:
                    message = json.loads(raw)
                    publish(message["id"], message["name"], message["args"], message["kwargs"])
                    fed += 1
                self.scripts.run(
                    "bulk_fed", [lists[0], TENANTS, TURN, lists[1]], [raw or b"", tenant]
                )
            return fed
        finally:
            self.redis.delete(FEEDER)


def _has_older(tenant: str) -> bool:
    return older_key(tenant) != parked_key(tenant)
