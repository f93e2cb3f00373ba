"""What makes delivery safe to repeat: newest-wins property state, idempotency markers and
a per-(connector, user) lock, all in Redis so every worker process sees the same.

How the three fit together (delivery.py runs them in this order):

1. ``lock(tenant, connector, user)`` — at most one request per destination user in flight,
   so requests for one user reach the destination one at a time.
2. ``is_done`` — an event that already ended for this connector is a duplicate.
3. ``merge`` — atomically merges the event's property values into the per-(tenant, user)
   state, keeping for each property the value from the newest ordering key, and returns
   the properties this event *owns* (its value is the newest known). Only those are sent.
4. ``mark_done`` after the destination answered.

Why this gives "newest wins" per field: merges only ever move a property forward, and the
merge plus the send happen under the lock. If event B is newer than A on property f, then
whichever of A's sends to a connector happens after B merged finds f owned by B and leaves
f out; any send of A before that completes before B's send starts. So the last value sent
for f is B's (or something newer).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import redis

from worker.errors import Deferred
from worker.events import OrderingKey, Value

# Entries are "timestamp_us \t version \t value_json \t event_key". JSON never contains a raw
# tab, so the first three fields split unambiguously; the event key (free text) goes last.
_MERGE = """
local function newer(ts, ver, cts, cver)
  if ver ~= '' and cver ~= '' and ver ~= cver then
    return tonumber(ver) > tonumber(cver)
  end
  return tonumber(ts) > tonumber(cts)
end
local ts, ver, event_key = ARGV[1], ARGV[2], ARGV[3]
local owned = {}
for i = 5, #ARGV, 2 do
  local name, entry = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', KEYS[1], name)
  local take = not current
  if current then
    local cts, cver, _, ckey = string.match(current, '^(%-?%d+)\\t(%-?%d*)\\t([^\\t]*)\\t(.*)$')
    if ckey == event_key then
      owned[#owned + 1] = name
    elseif newer(ts, ver, cts, cver) then
      take = true
    end
  end
  if take then
    redis.call('HSET', KEYS[1], name, entry)
    owned[#owned + 1] = name
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[4])
return owned
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def key(kind: str, *parts: str) -> str:
    """A Redis key whose variable parts cannot run into each other.

    Tenants and users are free text: with plain ":" joins, tenant "a:b" + user "c" and
    tenant "a" + user "b:c" would share state. JSON-encoding the parts keeps them apart.
    """
    return f"prefsync:{kind}:{json.dumps(parts, ensure_ascii=False, separators=(',', ':'))}"


class UserBusy(Deferred):
    """Another delivery to this destination user is still in flight: come back shortly."""


class StateStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        state_ttl: int,
        idempotency_ttl: int,
        lock_ttl: float,
        lock_wait: float,
    ) -> None:
        self.redis = client
        self.state_ttl = state_ttl
        self.idempotency_ttl = idempotency_ttl
        self.lock_ttl_ms = int(lock_ttl * 1000)
        self.lock_wait = lock_wait
        self._merge = client.register_script(_MERGE)
        self._release = client.register_script(_RELEASE)

    def merge(
        self,
        tenant: str,
        user: str,
        event_key: str,
        ordering: OrderingKey,
        values: Mapping[str, Value],
    ) -> set[str]:
        """Merge ``values`` (canonical property name -> value) and return the names whose
        newest value is this event's. A tie in ordering keeps the value already stored."""
        if not values:
            return set()
        version = "" if ordering.version is None else str(ordering.version)
        args: list[str | int] = [ordering.timestamp_us, version, event_key, self.state_ttl]
        for name, value in values.items():
            entry = f"{ordering.timestamp_us}\t{version}\t{json.dumps(value)}\t{event_key}"
            args += [name, entry]
        owned = self._merge(keys=[key("state", tenant, user)], args=args)
        return {name.decode() if isinstance(name, bytes) else name for name in owned}

    def current(self, tenant: str, user: str) -> dict[str, Value]:
        """The merged newest value of every property known for a user (for operators)."""
        raw = self.redis.hgetall(key("state", tenant, user))
        out: dict[str, Value] = {}
        for name, entry in raw.items():
            value_json = entry.decode().split("\t", 3)[2]
            out[name.decode()] = json.loads(value_json)
        return out

    def is_done(self, tenant: str, connector_id: str, event_key: str) -> bool:
        return bool(self.redis.exists(key("done", tenant, connector_id, event_key)))

    def mark_done(self, tenant: str, connector_id: str, event_key: str) -> None:
        self.redis.set(key("done", tenant, connector_id, event_key), 1, ex=self.idempotency_ttl)

    @contextmanager
    def lock(self, tenant: str, connector_id: str, user: str) -> Iterator[None]:
        """Hold the (connector, user) lock, waiting up to ``lock_wait`` seconds for it.

        The lock expires by itself (``lock_ttl``) so a killed worker cannot hold a user
        forever; ``lock_ttl`` is set above the longest a delivery's HTTP calls may take.
        """
        name = key("lock", tenant, connector_id, user)
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.lock_wait
        while not self.redis.set(name, token, nx=True, px=self.lock_ttl_ms):
            if time.monotonic() >= deadline:
                raise UserBusy("another delivery to this user is still in flight", wait=1.0)
            time.sleep(0.02)
        try:
            yield
        finally:
            self._release(keys=[name], args=[token])
