"""What makes delivery safe to repeat: newest-wins property state, idempotency and a
per-(connector, user) lock, all in one Redis record per person so that every worker
process sees the same and a delivery costs a few commands per person.

The record of a person (its format and Python reader: worker.records.person) holds per
property the newest known value and the event it came from; per connector what it was told
of each property (a short keyed hash, *ref*, of the event), the fields several properties
feed as last delivered, the lock, and the newest erasure that ended there; and the
person's tombstone. The Lua scripts that change it are in lua/ (claim.lua, finish.lua,
tombstone.lua, forget.lua), each after the record's reader, lua/person.lua; they run as
Redis functions (worker.records.scripts).

Idempotency is answered from that record, not from a marker per event: an event that owns
a property (its value is the newest known) is sent unless the connector was told that very
event for it; an event that owns none is stale; one whose every owned property was told
(or which owns none and some property still names it as told) had ended: a duplicate. So
the record grows with people, properties and connectors, never with events.

How the steps fit together (worker.delivery.deliverer runs them for a group of users at
a time):

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

Where a destination ignores letter case (Brevo's email addresses: every spelling names one
contact), a claim also locks and merges into the record of the casefolded id (``folded``,
in the same format): a value goes only when it is the newest among every spelling too, and
that record's tombstone outranks the past of every spelling (docs/erasure.md).

Records written by the release before this one are still read for as long as they can
live after the upgrade, and folded into the new record as each person is claimed
(worker.records.legacy, lua/legacy.lua).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from worker.core.errors import Deferred
from worker.core.events import OrderingKey, Value
from worker.core.retries import clock
from worker.infra.pseudonym import Pseudonyms
from worker.records.keys import key, text
from worker.records.legacy import PreviousRelease
from worker.records.person import REF, Known, appended, current_values, delivered_to, load_record
from worker.records.scripts import Scripts


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

#: What ``untell`` records as told: never an event's ref (those are hex digits).
_UNTOLD = "untold"


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
    #: per user the connector compares without letter case, the key of the record of their
    #: casefolded id (``StateStore.folded``), whose lock this claim holds too
    folded: dict[str, str] = field(default_factory=dict)


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
        self.lock_ttl_ms = int(lock_ttl * 1000)
        self.lock_wait = lock_wait
        self.scripts = Scripts(client)
        self.previous = PreviousRelease(
            client, state_ttl=state_ttl, idempotency_ttl=idempotency_ttl
        )

    def person(self, user: str) -> str:
        """What names ``user`` in every key: their keyed hash (worker.infra.pseudonym)."""
        return self.pseudonyms.user(user)

    def _ref(self, event_key: str) -> str:
        # The event key of a user payload holds the PMP's id of the person: hashed too.
        return self.pseudonyms.of("event", event_key)

    def _record(self, tenant: str, person: str) -> str:
        return key("person", tenant, person)

    def folded(self, tenant: str, folded_id: str) -> str:
        """The key of the record of everyone whose id casefolds to ``folded_id``: a
        destination that ignores letter case (Brevo's email addresses) names them all as
        one person. A record as a person's (worker.records.person), holding the newest
        value of each property among every spelling (merged by the claims of such
        destinations), their locks, and the tombstone of the newest erasure of any
        spelling. Named by a keyed hash of its own (never a person's): exact ids stay apart
        for the other destinations."""
        return key("casefold", tenant, self.pseudonyms.of("casefold", folded_id))

    def older(self) -> tuple[bool, bool]:
        """Whether records of the release before this one may still live (its state, its
        done markers): worker.records.legacy.PreviousRelease.live."""
        return self.previous.live()

    @contextmanager
    def claim(
        self,
        tenant: str,
        connector_id: str,
        writes_by_user: Mapping[str, Sequence[Write]],
        wait: float | None = None,
        folded_id: Callable[[str], str | None] = lambda _user: None,
    ) -> Iterator[Claim]:
        """Lock, check and merge each user's writes (one round trip for all users), waiting
        up to ``wait`` (default ``lock_wait``) seconds for users held elsewhere; yields the
        ``Claim``. A busy user's deliveries must come back later (``UserBusy``).

        The locks are released by ``finish`` or, if the block ends without it, on exit. A
        lock also expires by itself (``lock_ttl``) so a killed worker cannot hold a user
        forever; ``lock_ttl`` outlasts the longest a task may run (its hard time limit).
        A tie in ordering keeps the value already stored (or written first).
        ``folded_id``: a user's id as the destination compares it when it ignores letter
        case (worker.connectors.base.Connector.folded_id); the tombstone of that form
        outranks their past too.
        """
        # 64 random bits tell holders apart; the token is kept in the person's record.
        token = uuid.uuid4().hex[:16]
        claim = Claim(tenant, connector_id, token, busy=set(writes_by_user), writes=writes_by_user)
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        try:
            while True:
                self._claim_busy(claim, folded_id)
                if not claim.busy or time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
            yield claim
        finally:
            if not claim.finished and claim.held:
                with self.redis.pipeline(transaction=False) as pipe:
                    self.finish(claim, {}, {}, pipe)
                    pipe.execute()

    def _claim_busy(
        self, claim: Claim, folded_id: Callable[[str], str | None] = lambda _user: None
    ) -> None:
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
            folded = folded_id(user)
            if folded is not None:
                claim.folded[user] = self.folded(tenant, folded)
                keys.append(claim.folded[user])
            args.append("" if folded is None else "1")
            if fold or marked:
                keys += self.previous.claim_keys(tenant, connector_id, person)
            writes = claim.writes[user]
            args.append(len(writes))
            for write in writes:
                ref = refs.setdefault(write.event_key, self._ref(write.event_key))
                if marked:
                    keys.append(self.previous.done_marker(tenant, connector_id, write.event_key))
                args += self._claim_args(write, ref)
        answers = self.scripts.run("claim", keys, args)
        for user, answer in zip(waiting, answers, strict=True):
            if answer is None:
                continue
            claim.busy.discard(user)
            claim.held.append(user)
            done_raw, erased_raw, record, folded_record = answer
            done = {text(event_key) for event_key in done_raw}
            erased = {text(event_key) for event_key in erased_raw}
            claim.erased |= {(user, event_key) for event_key in erased}
            found = load_record(record)
            sources = {name: entry[3] for name, entry in found["p"].items()}
            # Where ids fold, a property another spelling's newer event holds is not owned.
            among = load_record(folded_record)["p"] if folded_record else {}
            told = found["t"].get(connector_id) or {}
            owners: dict[str, str] = {}
            for write in claim.writes[user]:
                event_key = write.event_key
                if event_key in done or event_key in erased or write.erase:
                    continue
                ref = refs[event_key][:REF]
                mine = [
                    name
                    for name in write.values
                    if sources.get(name) == event_key
                    and (name not in among or among[name][3] == event_key)
                ]
                fresh = [name for name in mine if told.get(name) != ref]
                owners |= dict.fromkeys(fresh, event_key)
                if not fresh and any(told.get(name) == ref for name in write.values):
                    done.add(event_key)
            claim.done |= {(user, event_key) for event_key in done}
            claim.owners[user] = owners
            claim.sources[user] = sources
            claim.current[user] = current_values(found)
            claim.delivered[user] = delivered_to(found, connector_id)

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
            erasure: list[str] | None = None
            told: dict[str, str] = {}
            for write in claim.writes.get(user, ()):
                if write.event_key not in ended:
                    continue
                ref = claim.refs[write.event_key][:REF]
                if write.erase:
                    erasure = [str(write.ordering.timestamp_us), ref]
                for name in write.values:
                    if sources.get(name) == write.event_key:
                        told[name] = ref
            sent = delivered_by_user.get(user)
            keys.append(claim.records[user])
            lines.append(appended(connector_id, claim.token, erasure, told, sent))
            if user in claim.folded:
                keys.append(claim.folded[user])
                lines.append(appended(connector_id, claim.token, None, {}, None))
        self.scripts.run("finish", keys, [self.state_ttl, *lines], client)

    def known(self, tenant: str, user: str) -> dict[str, Known]:
        """Everything the newest-wins state holds for a user, by canonical property name."""
        person = self.person(user)
        found = self.previous.known(tenant, person)  # not folded in until next claimed
        for name, entry in self._read(tenant, person)["p"].items():
            stored = Known.of(*entry)
            older = found.get(name)
            if older is None or stored.ordering.newer_than(older.ordering):
                found[name] = stored
        return found

    def delivered(self, tenant: str, connector_id: str, user: str) -> dict[str, Any]:
        """The derived fields as last delivered to a connector for a user."""
        person = self.person(user)
        found = self.previous.delivered(tenant, connector_id, person)
        return found | delivered_to(self._read(tenant, person), connector_id)

    def ended_sources(self, tenant: str, connector_id: str, user: str) -> set[str]:
        """The properties whose newest value came from an event that ended for this
        connector (sent, or found unchanged there): for ``prefsync state show``."""
        found = self._read(tenant, self.person(user))
        told = found["t"].get(connector_id) or {}
        return {
            name
            for name, entry in found["p"].items()
            if told.get(name) == self._ref(Known.of(*entry).event_key)[:REF]
        }

    def untell(
        self,
        tenant: str,
        connector_id: str,
        user: str,
        properties: Iterable[str],
        fields: Iterable[str],
    ) -> None:
        """Forget that the connector was told the newest value of ``properties``
        (canonical names) and what it was last delivered of ``fields`` (fed fields): the
        next delivery of the events those values came from sends them again. For a tool
        found to have lost them (``prefsync reconcile --fix``); the lock is left alone."""
        told = dict.fromkeys(properties, _UNTOLD)
        line = appended(connector_id, "", None, told, dict.fromkeys(fields))
        record = self._record(tenant, self.person(user))
        self.scripts.run("finish", [record], [self.state_ttl, line])

    def forget(self, tenant: str, user: str, connector_ids: Iterable[str]) -> int:
        """Drop what prefsync believes about a user (every property's newest value and
        the derived fields delivered to each connector); how many records there were.
        What each connector was told stays, and so does the tombstone: an event that
        ended is not sent again, and an erasure still outranks the past."""
        person = self.person(user)
        names = [self._record(tenant, person)]
        names += self.previous.forgotten(tenant, person, connector_ids, done=False)
        self._forget_folded(tenant, user, "all")
        return int(self.scripts.run("forget", names, ["all"]))

    def is_done(self, tenant: str, connector_id: str, user: str, event_key: str) -> bool:
        """Whether the event ended for this connector and nothing newer was told to it
        since for the properties it owned (or, for an erasure, whether an erasure at least
        as new was told)."""
        person = self.person(user)
        ref = self._ref(event_key)
        found = self._read(tenant, person)
        erasure = found["x"].get(connector_id)
        if ref[:REF] in (found["t"].get(connector_id) or {}).values() or (
            erasure is not None and erasure[1] == ref[:REF]
        ):
            return True
        return self.previous.is_done(tenant, connector_id, person, ref, event_key)

    # -- erasure (worker.records.erasure runs it) -----------------------------------------

    def erase(self, tenant: str, user: str, timestamp_us: int) -> None:
        """Write the person's tombstone: every event of theirs dated at or before
        ``timestamp_us`` is outranked by their erasure. It only moves forward, and lives as
        long as the state would have. So does the tombstone of their casefolded id, which
        outranks the past of every spelling of it where a destination ignores letter case."""
        person = self.person(user)
        keys = [self._record(tenant, person), self.folded(tenant, user.casefold())]
        if self.older()[0]:
            keys.append(self.previous.tombstone(tenant, person))
        self.scripts.run("tombstone", keys, [timestamp_us, self.state_ttl])

    def erased_at(self, tenant: str, user: str) -> int | None:
        """The timestamp_us of the person's erasure, if their tombstone is still kept."""
        person = self.person(user)
        found = [self._read(tenant, person)["e"], self.previous.erased_at(tenant, person)]
        moments = [int(moment) for moment in found if moment is not None]
        return max(moments) if moments else None

    def folded_erased_at(self, tenant: str, folded_id: str) -> int | None:
        """The timestamp_us of the newest erasure of any id that casefolds to
        ``folded_id``, if its tombstone is still kept (``folded``)."""
        found = load_record(self.redis.get(self.folded(tenant, folded_id)))["e"]
        return None if found is None else int(found)

    def forget_erased(
        self, tenant: str, user: str, connector_ids: Iterable[str], timestamp_us: int
    ) -> int:
        """Forget the person up to their erasure at ``timestamp_us``: the state's values
        dated at or before it (later ones are a new life, kept) and what each connector
        was told of them, and the values last delivered to each connector. The tombstone
        stays. How many records went."""
        person = self.person(user)
        keys = [self._record(tenant, person)]
        keys += self.previous.forgotten(tenant, person, connector_ids, done=True)
        self._forget_folded(tenant, user, timestamp_us)
        return int(self.scripts.run("forget", keys, [timestamp_us]))

    def _forget_folded(self, tenant: str, user: str, up_to: str | int) -> None:
        # The casefolded id's record holds the newest values of every spelling, some of
        # them the person's: they go too (not counted: copies of what the person's record
        # holds, or of another spelling's). Ordering across spellings starts again.
        self.scripts.run("forget", [self.folded(tenant, user.casefold())], [up_to])

    def _read(self, tenant: str, person: str) -> dict[str, Any]:
        return load_record(self.redis.get(self._record(tenant, person)))

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
