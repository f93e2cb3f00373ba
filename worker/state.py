"""What makes delivery safe to repeat: newest-wins property state, idempotency markers and
a per-(connector, user) lock, all in Redis so every worker process sees the same.

How the three fit together (delivery.py runs them for a group of users at a time):

1. ``claim(tenant, connector, writes by user)`` — one Lua script per user, all users in one
   round trip, each atomic:
   - take the (connector, user) lock, so that requests for one user reach the destination
     one at a time; a user held elsewhere is *busy* and nothing else is done for it;
   - note which of the user's events already ended for this connector (duplicates: the
     done markers, one sorted set per tenant, connector and person, hold a keyed hash of
     each event key that ended, scored by when its marker expires);
   - note which are outranked by the person's erasure (dated at or before their
     tombstone: worker.erasure), which are neither merged nor sent; an erasure in the
     claim moves the tombstone forward itself;
   - merge the other events' property values into the per-(tenant, user) state, keeping
     for each property the value from the newest ordering key, and return the state: which
     event *owns* each property (its value is the newest known; only those are sent) and
     the current value of every property, from which the fields several properties feed
     (Braze ``email_subscribe``) are computed — with the values last delivered for those
     fields, so that an unchanged derived value is not sent again.
2. ``finish`` after the destination answered: the done markers of the events that ended,
   the derived values delivered and the release of the locks, queued on the transaction
   that records the outcomes.

Why this gives "newest wins" per field: merges only ever move a property forward, and the
merge plus the send happen under the lock. If event B is newer than A on property f, then
whichever of A's sends to a connector happens after B merged finds f owned by B and leaves
f out; any send of A before that completes before B's send starts. So the last value sent
for f is B's (or something newer).

Every key names the person by the keyed hash of their id (worker.pseudonym), never by
the id: once they are erased and forgotten, nothing left in Redis names them.

Doing the three steps in one script per user (rather than a round trip each) is for
throughput: a batch of 50 Braze users costs two round trips and about two commands per
user, lock to release.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from worker.errors import Deferred
from worker.events import OrderingKey, Value
from worker.pseudonym import Pseudonyms
from worker.retries import clock

# Entries are "timestamp_us \t version \t value_json \t event_key". JSON never contains a raw
# tab, so the first three fields split unambiguously; the event key (free text) goes last.
#
# KEYS: the user's lock, the user's state, the values last delivered to this connector for
# the user, the user's done markers for this connector (a sorted set: member = keyed hash
# of the event key, score = when the marker expires), the user's erasure tombstone (the
# deletion's timestamp_us), then one key per event: its done marker of the older shape
# (named by the event key alone), still read until it expires.
# ARGV: the lock token, the lock TTL (ms), the state TTL (s), now (epoch s), then per
# event: its key, its done-marker member, "e" for an erasure or "w", its timestamp_us, how
# many property writes follow, then those writes (name, timestamp_us, version, entry).
# Returns false when the lock is held elsewhere (nothing done); else {the keys of the
# events already done, the keys of the events the person's erasure outranks (dated at or
# before it), the state after the merge, the values last delivered} (both as HGETALL gives
# them). An erasure is not merged: it moves the tombstone forward (it outranks every event
# of the person dated at or before it). Only a write that wins refreshes the state's
# expiry: a merge that loses must not keep alive the state it lost to.
_CLAIM = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local function newer(ts, ver, cts, cver)
  if ver ~= '' and cver ~= '' and ver ~= cver then
    return tonumber(ver) > tonumber(cver)
  end
  return tonumber(ts) > tonumber(cts)
end
local now = tonumber(ARGV[4])
local events = {}
local at = 5
for marker = 6, #KEYS do
  local count = tonumber(ARGV[at + 4])
  local score = redis.call('ZSCORE', KEYS[4], ARGV[at + 1])
  events[#events + 1] = {
    key = ARGV[at], erase = ARGV[at + 2] == 'e', raw_ts = ARGV[at + 3],
    ts = tonumber(ARGV[at + 3]), first = at + 5,
    count = count,
    done = (score and tonumber(score) > now) or redis.call('EXISTS', KEYS[marker]) == 1,
  }
  at = at + 5 + 4 * count
end
-- Timestamps stay strings when written: Lua would print a 16-digit number as 1.7e+15.
local tomb = tonumber(redis.call('GET', KEYS[5]))
local moved = false
for _, event in ipairs(events) do
  if event.erase and not event.done and (not tomb or event.ts > tomb) then
    tomb = event.ts
    moved = event.raw_ts
  end
end
if moved then redis.call('SET', KEYS[5], moved, 'EX', ARGV[3]) end
local done, erased = {}, {}
local changed = false
for _, event in ipairs(events) do
  if event.done then
    done[#done + 1] = event.key
  elseif event.erase then
    -- sent as the destination's erasure; nothing to merge
  elseif tomb and event.ts <= tomb then
    erased[#erased + 1] = event.key
  else
    for i = event.first, event.first + 4 * (event.count - 1), 4 do
      local name, ts, ver, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
      local current = redis.call('HGET', KEYS[2], name)
      local wins = true
      if current then
        local cts, cver, _, ckey = string.match(current, '^(%-?%d+)\\t(%-?%d*)\\t([^\\t]*)\\t(.*)$')
        wins = ckey ~= event.key and newer(ts, ver, cts, cver)
      end
      if wins then
        redis.call('HSET', KEYS[2], name, entry)
        changed = true
      end
    end
  end
end
if changed then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return {done, erased, redis.call('HGETALL', KEYS[2]), redis.call('HGETALL', KEYS[3])}
"""

# KEYS: the user's lock, the values last delivered to the connector, the user's done
# markers for the connector. ARGV: the lock token, the markers' TTL (s), the state TTL (s),
# now (epoch s), how many markers follow, the markers (members), then the delivered fields
# and their JSON values. Markers are set whoever holds the lock now: the events did end.
# Expired markers are dropped as new ones come, so one person's set stays small.
_FINISH = """
local now, ttl, count = tonumber(ARGV[4]), tonumber(ARGV[2]), tonumber(ARGV[5])
if count > 0 then
  for i = 6, 5 + count do redis.call('ZADD', KEYS[3], now + ttl, ARGV[i]) end
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('EXPIRE', KEYS[3], ttl)
end
if #ARGV > 5 + count then
  redis.call('HSET', KEYS[2], unpack(ARGV, 6 + count))
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""

# The tombstone of a person's erasure: KEYS[1] moves forward to ARGV[1] (timestamp_us),
# never back; it lives ARGV[2] seconds, as the state would have.
_TOMBSTONE = """
local tomb = tonumber(redis.call('GET', KEYS[1]))
if not tomb or tonumber(ARGV[1]) > tomb then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0
"""

# Forgets a person up to their erasure: KEYS[1] their state, whose entries dated at or
# before ARGV[1] (timestamp_us) go (later ones are a new life), then every key of theirs
# to delete whole (values last delivered, done markers). Returns how many went.
_FORGET = """
local gone = 0
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  local ts = tonumber(string.match(flat[i + 1], '^(%-?%d+)\\t'))
  if ts <= tonumber(ARGV[1]) then
    gone = gone + redis.call('HDEL', KEYS[1], flat[i])
  end
end
if #KEYS > 1 then gone = gone + redis.call('DEL', unpack(KEYS, 2)) end
return gone
"""


# Built once: json.dumps with options builds a new encoder at every call.
_encode_parts = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def key(kind: str, *parts: str) -> str:
    """A Redis key whose variable parts cannot run into each other.

    Tenants and users are free text: with plain ":" joins, tenant "a:b" + user "c" and
    tenant "a" + user "b:c" would share state. JSON-encoding the parts keeps them apart.
    """
    return f"prefsync:{kind}:{_encode_parts(parts)}"


@dataclass(frozen=True, slots=True)
class Write:
    """What one event says about one user's properties: canonical name -> value."""

    event_key: str
    ordering: OrderingKey
    values: Mapping[str, Value]
    #: the person's erasure (``user.deleted``): merged into the tombstone, not the state
    erase: bool = False


#: user -> canonical property name -> key of the event whose value is the newest
Owners = dict[str, dict[str, str]]


class UserBusy(Deferred):
    """Another delivery to this destination user is still in flight: come back shortly."""


@dataclass
class Claim:
    """What ``StateStore.claim`` did for a group of users."""

    tenant: str
    connector_id: str
    token: str
    #: users whose lock this claim holds, and which were merged
    held: list[str] = field(default_factory=list)
    #: users whose lock is held elsewhere: nothing was done for them
    busy: set[str] = field(default_factory=set)
    #: (user, event key) of the held users' events that already ended for this connector
    done: set[tuple[str, str]] = field(default_factory=set)
    #: (user, event key) of the held users' events dated at or before the person's erasure:
    #: they must not bring the person back (not merged, not sent)
    erased: set[tuple[str, str]] = field(default_factory=set)
    #: per held user, the properties one of the claimed (not done) events owns
    owners: Owners = field(default_factory=dict)
    #: per held user, the newest known value of every property, after the merge
    current: dict[str, dict[str, Value]] = field(default_factory=dict)
    #: per held user, the fields fed by several properties as last delivered to this
    #: connector (worker.connectors.base.Feed): a derived value is sent when it differs
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the release of the locks was written (``StateStore.finish``, once its transaction ran)
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Known:
    """What prefsync believes about one property of a person (``prefsync state show``)."""

    value: Value
    timestamp_us: int
    version: int | None
    event_key: str  # the event the value came from


class StateStore:
    def __init__(
        self,
        client: redis.Redis,
        *,
        state_ttl: int,
        idempotency_ttl: int,
        lock_ttl: float,
        lock_wait: float,
        pseudonyms: Pseudonyms,
    ) -> None:
        self.redis = client
        self.pseudonyms = pseudonyms
        self.state_ttl = state_ttl
        self.idempotency_ttl = idempotency_ttl
        self.lock_ttl_ms = int(lock_ttl * 1000)
        self.lock_wait = lock_wait
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._tombstone = client.register_script(_TOMBSTONE)
        self._forget = client.register_script(_FORGET)

    def person(self, user: str) -> str:
        """What names ``user`` in every key: their keyed hash (worker.pseudonym)."""
        return self.pseudonyms.user(user)

    def _done_member(self, event_key: str) -> str:
        # The event key of a user payload holds the PMP's id of the person: hashed too.
        return self.pseudonyms.of("event", event_key)

    @contextmanager
    def claim(
        self,
        tenant: str,
        connector_id: str,
        writes_by_user: Mapping[str, Sequence[Write]],
        wait: float | None = None,
    ) -> Iterator[Claim]:
        """Lock, check and merge each user's writes (one round trip for all users), waiting
        up to ``wait`` (default ``lock_wait``) seconds for users held elsewhere; yields the
        ``Claim``. A busy user's deliveries must come back later (``UserBusy``).

        The locks are released by ``finish`` or, if the block ends without it, on exit. A
        lock also expires by itself (``lock_ttl``) so a killed worker cannot hold a user
        forever; ``lock_ttl`` outlasts the longest a task may run (its hard time limit).
        A tie in ordering keeps the value already stored (or written first).
        """
        claim = Claim(tenant, connector_id, uuid.uuid4().hex, busy=set(writes_by_user))
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        try:
            while True:
                self._claim_busy(claim, writes_by_user)
                if not claim.busy or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            yield claim
        finally:
            if not claim.finished and claim.held:
                with self.redis.pipeline(transaction=False) as pipe:
                    self.finish(claim, {}, {}, pipe)
                    pipe.execute()

    def _claim_busy(self, claim: Claim, writes_by_user: Mapping[str, Sequence[Write]]) -> None:
        """One try at the users of ``claim`` still busy."""
        tenant, connector_id = claim.tenant, claim.connector_id
        waiting = sorted(claim.busy)
        now = clock()
        with self.redis.pipeline(transaction=False) as pipe:
            for user in waiting:
                writes = writes_by_user[user]
                person = self.person(user)
                keys = [
                    key("lock", tenant, connector_id, person),
                    key("state", tenant, person),
                    key("sent", tenant, connector_id, person),
                    key("dones", tenant, connector_id, person),
                    key("erased", tenant, person),
                ]
                keys += [_legacy_done_key(tenant, connector_id, w.event_key) for w in writes]
                args = [claim.token, self.lock_ttl_ms, self.state_ttl, repr(now)]
                args += self._claim_args(writes)
                self._claim(keys=keys, args=args, client=pipe)
            answers = pipe.execute()
        for user, answer in zip(waiting, answers, strict=True):
            if answer is None:
                continue
            claim.busy.discard(user)
            claim.held.append(user)
            done_raw, erased_raw, state_raw, sent_raw = answer
            done = {_text(event_key) for event_key in done_raw}
            erased = {_text(event_key) for event_key in erased_raw}
            claim.done |= {(user, event_key) for event_key in done}
            claim.erased |= {(user, event_key) for event_key in erased}
            ours = {write.event_key for write in writes_by_user[user]} - done - erased
            owners: dict[str, str] = {}
            current: dict[str, Value] = {}
            for name, entry in _pairs(state_raw):
                known = _known(entry)
                current[name] = known.value
                if known.event_key in ours:
                    owners[name] = known.event_key
            claim.owners[user] = owners
            claim.current[user] = current
            claim.delivered[user] = {name: json.loads(raw) for name, raw in _pairs(sent_raw)}

    def finish(
        self,
        claim: Claim,
        done_by_user: Mapping[str, Iterable[str]],
        delivered_by_user: Mapping[str, Mapping[str, Any]],
        client: Pipeline,
    ) -> None:
        """Queue on ``client`` (a pipeline the caller executes, with the audit entries:
        OutcomeRecorder.record) the done markers of the events that ended and the derived
        fields delivered, by user, and the release of every lock ``claim`` holds. Once it
        ran, the caller sets ``claim.finished``; until then the claim releases its locks
        itself on exit."""
        tenant, connector_id = claim.tenant, claim.connector_id
        now = clock()
        for user in claim.held:
            person = self.person(user)
            keys = [
                key("lock", tenant, connector_id, person),
                key("sent", tenant, connector_id, person),
                key("dones", tenant, connector_id, person),
            ]
            members = [self._done_member(event_key) for event_key in done_by_user.get(user, ())]
            args: list[Any] = [claim.token, self.idempotency_ttl, self.state_ttl, repr(now)]
            args += [len(members), *members]
            for name, value in delivered_by_user.get(user, {}).items():
                args += [name, json.dumps(value)]
            self._finish(keys=keys, args=args, client=client)

    def current(self, tenant: str, user: str) -> dict[str, Value]:
        """The merged newest value of every property known for a user."""
        return {name: known.value for name, known in self.known(tenant, user).items()}

    def known(self, tenant: str, user: str) -> dict[str, Known]:
        """Everything the newest-wins state holds for a user, by canonical property name."""
        raw = self.redis.hgetall(key("state", tenant, self.person(user)))
        return {_text(name): _known(entry) for name, entry in raw.items()}

    def delivered(self, tenant: str, connector_id: str, user: str) -> dict[str, Any]:
        """The derived fields as last delivered to a connector for a user."""
        raw = self.redis.hgetall(key("sent", tenant, connector_id, self.person(user)))
        return {_text(name): json.loads(value) for name, value in raw.items()}

    def forget(self, tenant: str, user: str, connector_ids: Iterable[str]) -> int:
        """Drop what prefsync believes about a user (the newest-wins state and the derived
        fields delivered to each connector); how many keys there were. Done markers stay
        until they expire: an event that ended is not sent again."""
        person = self.person(user)
        names = [key("state", tenant, person)]
        names += [key("sent", tenant, connector_id, person) for connector_id in connector_ids]
        return int(self.redis.delete(*names))

    def is_done(self, tenant: str, connector_id: str, user: str, event_key: str) -> bool:
        """Whether the event already ended for this connector."""
        person = self.person(user)
        score = self.redis.zscore(
            key("dones", tenant, connector_id, person), self._done_member(event_key)
        )
        if score is not None and score > clock():
            return True
        return bool(self.redis.exists(_legacy_done_key(tenant, connector_id, event_key)))

    # -- erasure (worker.erasure runs it) ----------------------------------------------------

    def erase(self, tenant: str, user: str, timestamp_us: int) -> None:
        """Write the person's tombstone: every event of theirs dated at or before
        ``timestamp_us`` is outranked by their erasure. It only moves forward, and lives as
        long as the state would have."""
        self._tombstone(
            keys=[key("erased", tenant, self.person(user))], args=[timestamp_us, self.state_ttl]
        )

    def erased_at(self, tenant: str, user: str) -> int | None:
        """The timestamp_us of the person's erasure, if their tombstone is still kept."""
        raw = self.redis.get(key("erased", tenant, self.person(user)))
        return None if raw is None else int(raw)

    def forget_erased(
        self, tenant: str, user: str, connector_ids: Iterable[str], timestamp_us: int
    ) -> int:
        """Forget the person up to their erasure at ``timestamp_us``: the state's values
        dated at or before it (later ones are a new life, kept), the values last
        delivered to each connector and the done markers. The tombstone stays. How many
        records went."""
        person = self.person(user)
        keys = [key("state", tenant, person)]
        for connector_id in connector_ids:
            keys += [key("sent", tenant, connector_id, person)]
            keys += [key("dones", tenant, connector_id, person)]
        return int(self._forget(keys=keys, args=[timestamp_us]))

    def _claim_args(self, writes: Sequence[Write]) -> list[str | int]:
        args: list[str | int] = []
        for write in writes:
            ordering = write.ordering
            version = "" if ordering.version is None else str(ordering.version)
            args += [
                write.event_key,
                self._done_member(write.event_key),
                "e" if write.erase else "w",
                ordering.timestamp_us,
                len(write.values),
            ]
            head = f"{ordering.timestamp_us}\t{version}\t"
            for name, value in write.values.items():
                entry = f"{head}{json.dumps(value)}\t{write.event_key}"
                args += [name, ordering.timestamp_us, version, entry]
        return args


def _legacy_done_key(tenant: str, connector_id: str, event_key: str) -> str:
    """An event's done marker as releases before the per-person markers wrote it (named by
    the event key alone), still read until it expires so that an upgrade does not send a
    week of events again."""
    return key("done", tenant, connector_id, event_key)


def _known(entry: bytes | str) -> Known:
    timestamp_us, version, value_json, event_key = _text(entry).split("\t", 3)
    return Known(
        json.loads(value_json), int(timestamp_us), int(version) if version else None, event_key
    )


def _pairs(flat: Iterable[bytes | str]) -> Iterator[tuple[str, bytes | str]]:
    """(name, raw value) pairs of a flat HGETALL answer, names decoded."""
    items = iter(flat)
    return ((_text(name), value) for name, value in zip(items, items, strict=True))


def _text(part: bytes | str) -> str:
    return part.decode() if isinstance(part, bytes) else part
