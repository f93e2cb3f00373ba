"""What makes delivery safe to repeat: newest-wins property state, idempotency markers and
a per-(connector, user) lock, all in Redis so every worker process sees the same.

How the three fit together (delivery.py runs them in this order, for a whole batch of
events at once, each step one Redis round trip):

1. ``locks(tenant, connector, users)`` — at most one request per destination user in
   flight, so requests for one user reach the destination one at a time.
2. ``done_among`` — an event that already ended for this connector is a duplicate.
3. ``merge`` — atomically merges the events' property values into the per-(tenant, user)
   state, keeping for each property the value from the newest ordering key, and returns
   which event *owns* each property (its value is the newest known). Only those are sent.
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
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.client import Pipeline

from worker.errors import Deferred
from worker.events import OrderingKey, Value

# Entries are "timestamp_us \t version \t value_json \t event_key". JSON never contains a raw
# tab, so the first three fields split unambiguously; the event key (free text) goes last.
# ARGV: the TTL, then per write of one property: name, timestamp_us, version, event key,
# entry. Returns, for every name written, the event key whose value is now the newest.
_MERGE = """
local function newer(ts, ver, cts, cver)
  if ver ~= '' and cver ~= '' and ver ~= cver then
    return tonumber(ver) > tonumber(cver)
  end
  return tonumber(ts) > tonumber(cts)
end
local owners, names = {}, {}
for i = 2, #ARGV, 5 do
  local name, ts, ver, event_key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local entry = ARGV[i + 4]
  local current = redis.call('HGET', KEYS[1], name)
  local owner = event_key
  if current then
    local cts, cver, _, ckey = string.match(current, '^(%-?%d+)\\t(%-?%d*)\\t([^\\t]*)\\t(.*)$')
    if ckey ~= event_key then
      if newer(ts, ver, cts, cver) then
        redis.call('HSET', KEYS[1], name, entry)
      else
        owner = ckey
      end
    end
  else
    redis.call('HSET', KEYS[1], name, entry)
  end
  if owners[name] == nil then names[#names + 1] = name end
  owners[name] = owner
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
local out = {}
for _, name in ipairs(names) do
  out[#out + 1] = name
  out[#out + 1] = owners[name]
end
return out
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


@dataclass(frozen=True, slots=True)
class Write:
    """What one event says about one user's properties: canonical name -> value."""

    event_key: str
    ordering: OrderingKey
    values: Mapping[str, Value]


#: user -> canonical property name -> key of the event whose value is the newest
Owners = dict[str, dict[str, str]]


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

    def merge(self, tenant: str, writes_by_user: Mapping[str, Sequence[Write]]) -> Owners:
        """Merge each user's writes (in one round trip for all users) and return, per user,
        which of these writes' events owns each property now: canonical property name ->
        event key, for the properties whose newest value is one of the writes'. A tie in
        ordering keeps the value already stored (or written first)."""
        with self.redis.pipeline(transaction=False) as pipe:
            users = []
            for user, writes in writes_by_user.items():
                args = _merge_args(writes, self.state_ttl)
                if len(args) > 1:
                    self._merge(keys=[key("state", tenant, user)], args=args, client=pipe)
                    users.append(user)
            answers = pipe.execute()
        owners: Owners = {user: {} for user in writes_by_user}
        for user, answer in zip(users, answers, strict=True):
            ours = {write.event_key for write in writes_by_user[user]}
            pairs = [part.decode() if isinstance(part, bytes) else part for part in answer]
            owners[user] = {
                name: owner
                for name, owner in zip(pairs[::2], pairs[1::2], strict=True)
                if owner in ours
            }
        return owners

    def current(self, tenant: str, user: str) -> dict[str, Value]:
        """The merged newest value of every property known for a user (for operators)."""
        raw = self.redis.hgetall(key("state", tenant, user))
        out: dict[str, Value] = {}
        for name, entry in raw.items():
            value_json = entry.decode().split("\t", 3)[2]
            out[name.decode()] = json.loads(value_json)
        return out

    def done_among(self, tenant: str, connector_id: str, event_keys: Sequence[str]) -> set[str]:
        """Which of ``event_keys`` already ended for this connector (duplicates now)."""
        with self.redis.pipeline(transaction=False) as pipe:
            for event_key in event_keys:
                pipe.exists(key("done", tenant, connector_id, event_key))
            found = pipe.execute()
        return {event_key for event_key, hit in zip(event_keys, found, strict=True) if hit}

    def is_done(self, tenant: str, connector_id: str, event_key: str) -> bool:
        return bool(self.done_among(tenant, connector_id, [event_key]))

    def mark_done(
        self, tenant: str, connector_id: str, event_keys: Iterable[str], client: Pipeline
    ) -> None:
        """Queue the done markers of ``event_keys`` on ``client``, a pipeline the caller
        executes (with the audit entries: OutcomeRecorder.record)."""
        for event_key in event_keys:
            client.set(key("done", tenant, connector_id, event_key), 1, ex=self.idempotency_ttl)

    @contextmanager
    def locks(
        self,
        tenant: str,
        connector_id: str,
        users: Collection[str],
        wait: float | None = None,
    ) -> Iterator[set[str]]:
        """Hold the (connector, user) lock of as many ``users`` as possible, waiting up to
        ``wait`` (default ``lock_wait``) seconds for those held elsewhere; yields the users
        still busy (not held). Their deliveries must come back later (``UserBusy``).

        A lock expires by itself (``lock_ttl``) so a killed worker cannot hold a user
        forever; ``lock_ttl`` outlasts the longest a task may run (its hard time limit).
        """
        token = uuid.uuid4().hex
        names = {user: key("lock", tenant, connector_id, user) for user in users}
        held: list[str] = []
        busy = set(users)
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        try:
            while True:
                with self.redis.pipeline(transaction=False) as pipe:
                    waiting = sorted(busy)
                    for user in waiting:
                        pipe.set(names[user], token, nx=True, px=self.lock_ttl_ms)
                    taken = pipe.execute()
                for user, got in zip(waiting, taken, strict=True):
                    if got:
                        busy.discard(user)
                        held.append(names[user])
                if not busy or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            yield busy
        finally:
            with self.redis.pipeline(transaction=False) as pipe:
                for name in held:
                    self._release(keys=[name], args=[token], client=pipe)
                pipe.execute()


def _merge_args(writes: Sequence[Write], ttl: int) -> list[str | int]:
    args: list[str | int] = [ttl]
    for write in writes:
        ordering = write.ordering
        version = "" if ordering.version is None else str(ordering.version)
        for name, value in write.values.items():
            entry = f"{ordering.timestamp_us}\t{version}\t{json.dumps(value)}\t{write.event_key}"
            args += [name, ordering.timestamp_us, version, write.event_key, entry]
    return args
