"""What makes delivery safe to repeat: newest-wins property state, idempotency and a
per-(connector, user) lock, all in one Redis record per person so that every worker
process sees the same and a delivery costs a few commands per person.

The record of a person (one string per tenant and person, JSON, named by the keyed hash
of their id: worker.infra.pseudonym) holds

- ``p``: per property, the newest known value and its source: ``[timestamp_us, version,
  value JSON, event key]`` (the ordering key of the event it came from, and that event);
- ``t``: per connector, per property, a short keyed hash (*ref*) of the event whose value
  that connector was last told (or whose delivery ended there: skipped as unchanged, say);
- ``d``: per connector, the fields several properties feed, as last delivered;
- ``l``: per connector, the lock: ``[token, expiry in epoch ms]``;
- ``e``: the timestamp_us of the person's erasure (their tombstone: worker.records.erasure);
- ``x``: per connector, ``[timestamp_us, ref]`` of the newest erasure that ended there.

Idempotency is answered from that record, not from a marker per event: an event that owns
a property (its value is the newest known) is sent unless the connector was told that very
event for it; an event that owns none is stale; one whose every owned property was told
(or which owns none and some property still names it as told) had ended: a duplicate. So
the record grows with people, properties and connectors, never with events.

How the steps fit together (delivery.py runs them for a group of users at a time):

1. ``claim(tenant, connector, writes by user)`` — one Lua script for the whole group,
   atomic per user: read the record (GET), take the connector's lock (a user held
   elsewhere is *busy*, nothing else is done for it), note the events the person's
   erasure outranks (dated at or before their tombstone), which are neither merged nor
   sent (an erasure moves the tombstone forward itself), merge the other events'
   property values (newest ordering key wins), and write the record back (SET, with the
   state's expiry when a write won). The record comes back whole: what each event owns,
   what was told, the current value of every property (from which the fields several
   properties feed are computed) and what the connector was last told of those.
2. ``finish`` after the destination answered, queued on the transaction that records the
   outcomes: one APPEND per person of a line saying which events ended (their refs per
   owned property, or the erasure), the derived values delivered and the release of the
   lock. The next claim folds those lines into the record.

Why this gives "newest wins" per field: merges only ever move a property forward, and the
merge plus the send happen under the lock. If event B is newer than A on property f, then
whichever of A's sends to a connector happens after B merged finds f owned by B and leaves
f out; any send of A before that completes before B's send starts. So the last value sent
for f is B's (or something newer).

Records written by the release before this one (a hash of the state, the values last
delivered, a tombstone key, done markers) are still read for as long as they can live
after the upgrade (``older``), and folded into the new record as each person is claimed.
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

from worker.core.errors import Deferred
from worker.core.events import OrderingKey, Value
from worker.core.retries import clock
from worker.infra.pseudonym import Pseudonyms

# A record is JSON lines: the first is the record itself, the others are what ``finish``
# appended since (``f``: the connector, ``k``: the lock token it releases, ``t``, ``d``,
# ``x`` as in the record), folded in order. Timestamps stay strings: Lua would print a
# 16-digit number as 1.7e+15.
_LOAD = """
local function load(raw)
  local b = {p = {}, t = {}, d = {}, l = {}, x = {}}
  if not raw then return b end
  for line in string.gmatch(raw, '[^\\n]+') do
    local o = cjson.decode(line)
    local c = o.f
    if c == nil then
      for _, part in ipairs({'p', 't', 'd', 'l', 'x'}) do
        if o[part] then b[part] = o[part] end
      end
      b.e = o.e
    else
      for _, part in ipairs({'t', 'd'}) do
        if o[part] then
          local into = b[part][c] or {}
          for name, value in pairs(o[part]) do into[name] = value end
          b[part][c] = into
        end
      end
      local x = b.x[c]
      if o.x and (not x or tonumber(o.x[1]) >= tonumber(x[1])) then b.x[c] = o.x end
      local lock = b.l[c]
      if lock and lock[1] == o.k then b.l[c] = nil end
    end
  end
  return b
end
-- Parts left empty are left out: every byte of a record is kept for every person.
local function encode(b)
  for _, part in ipairs({'p', 't', 'd', 'l', 'x'}) do
    if next(b[part]) == nil then b[part] = nil end
  end
  return cjson.encode(b)
end
local function newer(ts, ver, cts, cver)
  if ver ~= '' and cver ~= '' and ver ~= cver then
    return tonumber(ver) > tonumber(cver)
  end
  return tonumber(ts) > tonumber(cts)
end
"""

# KEYS, per user: their record, then with ARGV[6] or ARGV[7] the older release's keys
# (state hash, tombstone, values last delivered to this connector, done markers for this
# connector), then with ARGV[7] one older done marker per event (named by the event key).
# ARGV: the lock token, the lock TTL (ms), the state TTL (s), now (epoch ms), the
# connector, "1" to fold the older release's records in, "1" to read its done markers,
# then per user: how many events, and per event its key, its ref (the keyed hash of its
# key; the older done markers hold it whole, a record its first 16 characters), "e" for
# an erasure or "w", its timestamp_us, its version ("" for none), how many property
# writes follow, then those writes (name, value JSON).
# Returns per user false when the lock is held elsewhere (nothing done); else {the keys of
# the events already done (an erasure this connector was told, or an older release's
# marker), the keys of the events the erasure outranks, the record as written}. Only a
# write that wins (or a new record) refreshes the expiry: a merge that loses must not
# keep alive the state it lost to.
_CLAIM = (
    _LOAD
    + """
local token, lock_ms, ttl, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local c, fold, marked = ARGV[5], ARGV[6] == '1', ARGV[7] == '1'
local answers = {}
local k, a = 1, 8
while a <= #ARGV do
  local name = KEYS[k]
  local older = nil
  if fold or marked then older = {KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]} end
  k = k + (older and 5 or 1)
  local events = {}
  local n = tonumber(ARGV[a])
  a = a + 1
  for i = 1, n do
    local count = tonumber(ARGV[a + 5])
    events[i] = {
      key = ARGV[a], ref = ARGV[a + 1], erase = ARGV[a + 2] == 'e', raw_ts = ARGV[a + 3],
      ts = tonumber(ARGV[a + 3]), ver = ARGV[a + 4], first = a + 6, count = count,
    }
    if marked then events[i].marker = KEYS[k]; k = k + 1 end
    a = a + 6 + 2 * count
  end
  local raw = redis.call('GET', name)
  local b = load(raw)
  local lock = b.l[c]
  if lock and lock[1] ~= token and tonumber(lock[2]) > now then
    answers[#answers + 1] = false
  else
    local changed = not raw
    if fold then
      local flat = redis.call('HGETALL', older[1])
      for i = 1, #flat, 2 do
        local ts, ver, value, ekey =
          string.match(flat[i + 1], '^(%-?%d+)\\t(%-?%d*)\\t([^\\t]*)\\t(.*)$')
        local cur = b.p[flat[i]]
        if not cur or newer(ts, ver, cur[1], cur[2]) then
          b.p[flat[i]] = {ts, ver, value, ekey}
        end
      end
      local tomb = redis.call('GET', older[2])
      if tomb and (not b.e or tonumber(tomb) > tonumber(b.e)) then b.e = tomb end
      local sent = redis.call('HGETALL', older[3])
      if #sent > 0 then
        local d = b.d[c] or {}
        for i = 1, #sent, 2 do
          if d[sent[i]] == nil then d[sent[i]] = sent[i + 1] end
        end
        b.d[c] = d
      end
      if #flat > 0 or tomb or #sent > 0 then
        redis.call('DEL', older[1], older[2], older[3])
        changed = true
      end
    end
    local x = b.x[c]
    for _, event in ipairs(events) do
      event.done = event.erase and x ~= nil and tonumber(x[1]) >= event.ts
      if marked and not event.done then
        local score = redis.call('ZSCORE', older[4], event.ref)
        event.done = (score and tonumber(score) > now / 1000)
          or redis.call('EXISTS', event.marker) == 1
      end
    end
    local tomb = b.e and tonumber(b.e)
    for _, event in ipairs(events) do
      if event.erase and not event.done and (not tomb or event.ts > tomb) then
        tomb = event.ts
        b.e = event.raw_ts
        changed = true
      end
    end
    local done, erased = {}, {}
    for _, event in ipairs(events) do
      if event.done then
        done[#done + 1] = event.key
      elseif event.erase then
        -- sent as the destination's erasure; nothing to merge
      elseif tomb and event.ts <= tomb then
        erased[#erased + 1] = event.key
      else
        for i = event.first, event.first + 2 * (event.count - 1), 2 do
          local cur = b.p[ARGV[i]]
          local wins = not cur
            or (cur[4] ~= event.key and newer(event.raw_ts, event.ver, cur[1], cur[2]))
          if wins then
            b.p[ARGV[i]] = {event.raw_ts, event.ver, ARGV[i + 1], event.key}
            changed = true
          end
        end
      end
    end
    b.l[c] = {token, string.format('%d', now + lock_ms)}
    local written = encode(b)
    if changed then
      redis.call('SET', name, written, 'EX', ttl)
    else
      redis.call('SET', name, written, 'KEEPTTL')
    end
    answers[#answers + 1] = {done, erased, written}
  end
end
return answers
"""
)

# KEYS: records; ARGV: the state TTL (s), then one line per record to append. A record
# gone meanwhile (forgotten, expired) is not kept for ever by the line that recreates it.
_FINISH = """
for i, name in ipairs(KEYS) do
  local line = '\\n' .. ARGV[i + 1]
  if redis.call('APPEND', name, line) == #line then redis.call('EXPIRE', name, ARGV[1]) end
end
return 1
"""

# The tombstone of a person's erasure: it moves forward to ARGV[1] (timestamp_us), never
# back, and the record then lives ARGV[2] seconds, as the state would have. KEYS[2], the
# older release's tombstone, is folded in.
_TOMBSTONE = (
    _LOAD
    + """
local b = load(redis.call('GET', KEYS[1]))
local tomb = b.e and tonumber(b.e)
local changed = false
local older = KEYS[2] and redis.call('GET', KEYS[2])
if older then
  changed = true
  if not tomb or tonumber(older) > tomb then tomb = tonumber(older); b.e = older end
end
if not tomb or tonumber(ARGV[1]) > tomb then
  b.e = ARGV[1]
  changed = true
end
if not changed then return 0 end
redis.call('SET', KEYS[1], encode(b), 'EX', ARGV[2])
if older then redis.call('DEL', KEYS[2]) end
return 1
"""
)

# Forgets a person. ARGV[1]: "all" (``prefsync state forget``: every property) or the
# timestamp_us of their erasure (properties dated at or before it go; later ones are a
# new life, kept). What each connector was told of a property that goes, goes with it;
# the values last delivered go whole. The tombstone, the erasures told and the locks
# stay. KEYS[1] the record, then keys of the older release to delete whole. Returns how
# many records went (properties and delivered values).
_FORGET = (
    _LOAD
    + """
local raw = redis.call('GET', KEYS[1])
local gone = 0
if raw then
  local b = load(raw)
  local up_to = ARGV[1] ~= 'all' and tonumber(ARGV[1])
  for name, entry in pairs(b.p) do
    if not up_to or tonumber(entry[1]) <= up_to then
      b.p[name] = nil
      gone = gone + 1
      if up_to then
        for _, told in pairs(b.t) do told[name] = nil end
      end
    end
  end
  for _, delivered in pairs(b.d) do
    for _ in pairs(delivered) do gone = gone + 1 end
  end
  b.d = {}
  redis.call('SET', KEYS[1], encode(b), 'KEEPTTL')
end
if #KEYS > 1 then gone = gone + redis.call('DEL', unpack(KEYS, 2)) end
return gone
"""
)

# Built once: json.dumps with options builds a new encoder at every call.
_encode_parts = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_encode_line = json.JSONEncoder(separators=(",", ":")).encode

#: Where this release notes when it first ran against a Redis an older release had
#: written to ("0": it never had); older records are read until they expire.
FORMAT = "prefsync:state-format"
#: Written by every older release (its outcome counters): that one existed.
_OLDER_TRACE = "prefsync:stats"
#: How much of an event's ref a record keeps (64 bits: one person's events never collide).
_REF = 16


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
    #: (duplicates): every property they own was told to it, or they own none and one
    #: still names them as told
    done: set[tuple[str, str]] = field(default_factory=set)
    #: (user, event key) of the held users' events dated at or before the person's erasure:
    #: they must not bring the person back (not merged, not sent)
    erased: set[tuple[str, str]] = field(default_factory=set)
    #: per held user, the properties one of the claimed events owns and this connector was
    #: not told yet
    owners: Owners = field(default_factory=dict)
    #: per held user, the newest known value of every property, after the merge
    current: dict[str, dict[str, Value]] = field(default_factory=dict)
    #: per held user, the fields fed by several properties as last delivered to this
    #: connector (worker.connectors.base.Feed): a derived value is sent when it differs
    delivered: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the release of the locks was written (``StateStore.finish``, once its transaction ran)
    finished: bool = False
    #: per held user, property -> the key of the event that owns it (all of them)
    sources: dict[str, dict[str, str]] = field(default_factory=dict)
    #: per user, the writes claimed
    writes: Mapping[str, Sequence[Write]] = field(default_factory=dict)
    #: per user, their record's key; per event key, its ref (both keyed hashes: made once)
    records: dict[str, str] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)


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
        self._older_since: float | None = None

    def person(self, user: str) -> str:
        """What names ``user`` in every key: their keyed hash (worker.infra.pseudonym)."""
        return self.pseudonyms.user(user)

    def _ref(self, event_key: str) -> str:
        # The event key of a user payload holds the PMP's id of the person: hashed too.
        return self.pseudonyms.of("event", event_key)

    def _record(self, tenant: str, person: str) -> str:
        return key("person", tenant, person)

    def older(self) -> tuple[bool, bool]:
        """Whether records of the release before this one may still live: (its state,
        values delivered and tombstones, for up to the state TTL after the upgrade; its
        done markers, for up to the idempotency TTL). Decided by the first process of this
        release to ask, from whether an older release ever counted an outcome here, so
        ask before recording anything (``Deliverer.deliver`` does)."""
        if self._older_since is None:
            since = self.redis.get(FORMAT)
            if since is None:
                trace = self.redis.exists(_OLDER_TRACE)
                self.redis.set(FORMAT, repr(clock()) if trace else "0", nx=True)
                since = self.redis.get(FORMAT)
            self._older_since = float(since or 0)
        if not self._older_since:
            return False, False
        now = clock()
        return (
            now < self._older_since + self.state_ttl,
            now < self._older_since + self.idempotency_ttl,
        )

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
        # 64 random bits tell holders apart; the token is kept in the person's record.
        token = uuid.uuid4().hex[:16]
        claim = Claim(tenant, connector_id, token, busy=set(writes_by_user), writes=writes_by_user)
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        try:
            while True:
                self._claim_busy(claim)
                if not claim.busy or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            yield claim
        finally:
            if not claim.finished and claim.held:
                with self.redis.pipeline(transaction=False) as pipe:
                    self.finish(claim, {}, {}, pipe)
                    pipe.execute()

    def _claim_busy(self, claim: Claim) -> None:
        """One try at the users of ``claim`` still busy: one script for all of them."""
        tenant, connector_id = claim.tenant, claim.connector_id
        waiting = sorted(claim.busy)
        fold, marked = self.older()
        keys: list[str] = []
        args: list[str | int] = [claim.token, self.lock_ttl_ms, self.state_ttl]
        args += [int(clock() * 1000), connector_id, "1" if fold else "", "1" if marked else ""]
        refs = claim.refs
        for user in waiting:
            person = self.person(user)
            claim.records[user] = self._record(tenant, person)
            keys.append(claim.records[user])
            if fold or marked:
                keys += [
                    key("state", tenant, person),
                    key("erased", tenant, person),
                    key("sent", tenant, connector_id, person),
                    key("dones", tenant, connector_id, person),
                ]
            writes = claim.writes[user]
            args.append(len(writes))
            for write in writes:
                ref = refs.setdefault(write.event_key, self._ref(write.event_key))
                if marked:
                    keys.append(_legacy_done_key(tenant, connector_id, write.event_key))
                args += self._claim_args(write, ref)
        answers = self._claim(keys=keys, args=args)
        for user, answer in zip(waiting, answers, strict=True):
            if answer is None:
                continue
            claim.busy.discard(user)
            claim.held.append(user)
            done_raw, erased_raw, record = answer
            done = {_text(event_key) for event_key in done_raw}
            erased = {_text(event_key) for event_key in erased_raw}
            claim.erased |= {(user, event_key) for event_key in erased}
            blob = _load(record)
            sources = {name: entry[3] for name, entry in blob["p"].items()}
            told = blob["t"].get(connector_id) or {}
            owners: dict[str, str] = {}
            for write in claim.writes[user]:
                event_key = write.event_key
                if event_key in done or event_key in erased or write.erase:
                    continue
                ref = refs[event_key][:_REF]
                mine = [name for name in write.values if sources.get(name) == event_key]
                fresh = [name for name in mine if told.get(name) != ref]
                owners |= dict.fromkeys(fresh, event_key)
                if not fresh and any(told.get(name) == ref for name in write.values):
                    done.add(event_key)
            claim.done |= {(user, event_key) for event_key in done}
            claim.owners[user] = owners
            claim.sources[user] = sources
            claim.current[user] = {name: json.loads(e[2]) for name, e in blob["p"].items()}
            delivered = blob["d"].get(connector_id) or {}
            claim.delivered[user] = {name: json.loads(raw) for name, raw in delivered.items()}

    def finish(
        self,
        claim: Claim,
        done_by_user: Mapping[str, Iterable[str]],
        delivered_by_user: Mapping[str, Mapping[str, Any]],
        client: Pipeline,
    ) -> None:
        """Queue on ``client`` (a pipeline the caller executes, with the audit entries:
        OutcomeRecorder.record) what ended, by user: the events that ended (for each, the
        properties it owns are recorded as told to this connector; for an erasure, the
        erasure), the derived fields delivered, and the release of every lock ``claim``
        holds. Once it ran, the caller sets ``claim.finished``; until then the claim
        releases its locks itself on exit."""
        if not claim.held:
            return
        connector_id = claim.connector_id
        keys: list[str] = []
        lines: list[str] = []
        for user in claim.held:
            ended = set(done_by_user.get(user, ()))
            sources = claim.sources.get(user, {})
            patch: dict[str, Any] = {"f": connector_id, "k": claim.token}
            told: dict[str, str] = {}
            for write in claim.writes.get(user, ()):
                if write.event_key not in ended:
                    continue
                ref = claim.refs[write.event_key][:_REF]
                if write.erase:
                    patch["x"] = [str(write.ordering.timestamp_us), ref]
                for name in write.values:
                    if sources.get(name) == write.event_key:
                        told[name] = ref
            if told:
                patch["t"] = told
            delivered = delivered_by_user.get(user)
            if delivered:
                patch["d"] = {name: json.dumps(value) for name, value in delivered.items()}
            keys.append(claim.records[user])
            lines.append(_encode_line(patch))
        self._finish(keys=keys, args=[self.state_ttl, *lines], client=client)

    def current(self, tenant: str, user: str) -> dict[str, Value]:
        """The merged newest value of every property known for a user."""
        return {name: known.value for name, known in self.known(tenant, user).items()}

    def known(self, tenant: str, user: str) -> dict[str, Known]:
        """Everything the newest-wins state holds for a user, by canonical property name."""
        person = self.person(user)
        found: dict[str, Known] = {}
        if self.older()[0]:  # not folded in until the person is next claimed
            raw = self.redis.hgetall(key("state", tenant, person))
            found = {_text(name): _known(entry) for name, entry in raw.items()}
        for name, entry in self._blob(tenant, person)["p"].items():
            ts, version, value_json, event_key = entry
            stored = Known(
                json.loads(value_json), int(ts), int(version) if version else None, event_key
            )
            older = found.get(name)
            if older is None or _ordering(stored).newer_than(_ordering(older)):
                found[name] = stored
        return found

    def delivered(self, tenant: str, connector_id: str, user: str) -> dict[str, Any]:
        """The derived fields as last delivered to a connector for a user."""
        person = self.person(user)
        found: dict[str, Any] = {}
        if self.older()[0]:
            raw = self.redis.hgetall(key("sent", tenant, connector_id, person))
            found = {_text(name): json.loads(value) for name, value in raw.items()}
        blob = self._blob(tenant, person)["d"].get(connector_id) or {}
        return found | {name: json.loads(value) for name, value in blob.items()}

    def forget(self, tenant: str, user: str, connector_ids: Iterable[str]) -> int:
        """Drop what prefsync believes about a user (every property's newest value and
        the derived fields delivered to each connector); how many records there were.
        What each connector was told stays, and so does the tombstone: an event that
        ended is not sent again, and an erasure still outranks the past."""
        person = self.person(user)
        names = [self._record(tenant, person), key("state", tenant, person)]
        names += [key("sent", tenant, connector_id, person) for connector_id in connector_ids]
        return int(self._forget(keys=names, args=["all"]))

    def is_done(self, tenant: str, connector_id: str, user: str, event_key: str) -> bool:
        """Whether the event ended for this connector and nothing newer was told to it
        since for the properties it owned (or, for an erasure, whether an erasure at least
        as new was told)."""
        person = self.person(user)
        ref = self._ref(event_key)
        blob = self._blob(tenant, person)
        erasure = blob["x"].get(connector_id)
        if ref[:_REF] in (blob["t"].get(connector_id) or {}).values() or (
            erasure is not None and erasure[1] == ref[:_REF]
        ):
            return True
        if not self.older()[1]:
            return False
        score = self.redis.zscore(key("dones", tenant, connector_id, person), ref)
        if score is not None and score > clock():
            return True
        return bool(self.redis.exists(_legacy_done_key(tenant, connector_id, event_key)))

    # -- erasure (worker.records.erasure runs it) -----------------------------------------

    def erase(self, tenant: str, user: str, timestamp_us: int) -> None:
        """Write the person's tombstone: every event of theirs dated at or before
        ``timestamp_us`` is outranked by their erasure. It only moves forward, and lives as
        long as the state would have."""
        person = self.person(user)
        keys = [self._record(tenant, person)]
        if self.older()[0]:
            keys.append(key("erased", tenant, person))
        self._tombstone(keys=keys, args=[timestamp_us, self.state_ttl])

    def erased_at(self, tenant: str, user: str) -> int | None:
        """The timestamp_us of the person's erasure, if their tombstone is still kept."""
        person = self.person(user)
        found = [self._blob(tenant, person).get("e")]
        if self.older()[0]:
            found.append(self.redis.get(key("erased", tenant, person)))
        moments = [int(raw) for raw in found if raw is not None]
        return max(moments) if moments else None

    def forget_erased(
        self, tenant: str, user: str, connector_ids: Iterable[str], timestamp_us: int
    ) -> int:
        """Forget the person up to their erasure at ``timestamp_us``: the state's values
        dated at or before it (later ones are a new life, kept) and what each connector
        was told of them, and the values last delivered to each connector. The tombstone
        stays. How many records went."""
        person = self.person(user)
        keys = [self._record(tenant, person), key("state", tenant, person)]
        for connector_id in connector_ids:
            keys += [key("sent", tenant, connector_id, person)]
            keys += [key("dones", tenant, connector_id, person)]
        return int(self._forget(keys=keys, args=[timestamp_us]))

    def _blob(self, tenant: str, person: str) -> dict[str, Any]:
        return _load(self.redis.get(self._record(tenant, person)))

    def _claim_args(self, write: Write, ref: str) -> list[str | int]:
        ordering = write.ordering
        args: list[str | int] = [
            write.event_key,
            ref,
            "e" if write.erase else "w",
            ordering.timestamp_us,
            "" if ordering.version is None else str(ordering.version),
            len(write.values),
        ]
        for name, value in write.values.items():
            args += [name, json.dumps(value)]
        return args


def _load(raw: bytes | str | None) -> dict[str, Any]:
    """A person's record as the Lua ``load`` reads it: the record, then the lines
    ``finish`` appended, folded in order."""
    blob: dict[str, Any] = {"p": {}, "t": {}, "d": {}, "l": {}, "x": {}, "e": None}
    if raw is None:
        return blob
    for line in _text(raw).split("\n"):
        if not line:
            continue
        part = json.loads(line)
        connector_id = part.get("f")
        if connector_id is None:
            blob.update({name: part.get(name) or {} for name in ("p", "t", "d", "l", "x")})
            blob["e"] = part.get("e")
            continue
        for name in ("t", "d"):
            if part.get(name):
                blob[name][connector_id] = (blob[name].get(connector_id) or {}) | part[name]
        erasure = blob["x"].get(connector_id)
        if part.get("x") and (erasure is None or int(part["x"][0]) >= int(erasure[0])):
            blob["x"][connector_id] = part["x"]
        lock = blob["l"].get(connector_id)
        if lock and lock[0] == part.get("k"):
            del blob["l"][connector_id]
    return blob


def _ordering(known: Known) -> OrderingKey:
    return OrderingKey(known.timestamp_us, known.version)


def _legacy_done_key(tenant: str, connector_id: str, event_key: str) -> str:
    """An event's done marker as two releases ago wrote it (named by the event key alone),
    still read until it expires so that an upgrade does not send a week of events again."""
    return key("done", tenant, connector_id, event_key)


def _known(entry: bytes | str) -> Known:
    timestamp_us, version, value_json, event_key = _text(entry).split("\t", 3)
    return Known(
        json.loads(value_json), int(timestamp_us), int(version) if version else None, event_key
    )


def _text(part: bytes | str) -> str:
    return part.decode() if isinstance(part, bytes) else part
