"""Delivering a batch of events to one connector: plain Python, testable without Celery.

``Deliverer.deliver`` decides whether each event has anything to say to this connector,
keeps it from overwriting newer information (worker.records.state), coalesces the events of each
user and hands one change per user to the connector. Outcomes (delivered or skipped) are
recorded as they come; what has not ended is returned for the task to retry, defer or
dead-letter.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.client import Pipeline

from worker.connectors.base import (
    Answer,
    BaseTransport,
    Change,
    Delivered,
    HttpRequest,
    HttpResponse,
    Skipped,
    Value,
    erasure_change,
    fed_fields,
    feeds,
    own_fields,
)
from worker.connectors.model import ConnectorConfig
from worker.core.errors import (
    Deferred,
    DeliveryError,
    PermanentError,
    PrefsyncError,
    RetryableError,
)
from worker.core.events import PreferenceEvent, canonical_name
from worker.core.outcomes import Outcome, OutcomeKind, SkipReason
from worker.delivery.pacing import PacedTransport, Pacer, account_key
from worker.records.recorder import Ended, OutcomeRecorder
from worker.records.state import Claim, StateStore, UserBusy, Write

_ERASED = "the person was erased after this event: it must not bring them back"
_HOLDS_IT = "the refusal came from this connector: it holds it already"


def skipped(reason: SkipReason, detail: str = "") -> Outcome:
    return Outcome(OutcomeKind.SKIPPED, reason=str(reason), detail=detail)


Resolved = dict[str, tuple[str, Value]]


def plan(event: PreferenceEvent, config: ConnectorConfig) -> Outcome | Resolved:
    """What ``event`` says to ``config``'s destination, or why it says nothing: for each
    mapped property that has a value, its name as the config writes it -> (canonical
    name, value). Shared by delivery and the dry-run preview so the two cannot disagree."""
    if event.skip_reason is not None:
        return skipped(event.skip_reason)
    if not config.enabled:
        return skipped(SkipReason.CONNECTOR_DISABLED)
    if not config.accepts_regulation(event.regulation):
        return skipped(SkipReason.OTHER_REGULATION, f"event regulation {event.regulation!r}")
    if event.erasure:
        # An erasure carries no property: what it sends is the connector's policy.
        if config.on_user_deleted == "ignore":
            return skipped(SkipReason.UNSUPPORTED_TYPE, "on_user_deleted is ignore")
        return {}
    resolved: Resolved = {}
    for mapping in config.mappings:
        found = event.resolve(mapping.value)
        if found is not None:
            resolved[mapping.value] = found
    return resolved or skipped(SkipReason.NO_MAPPED_VALUES)


#: why an event of a batch has not ended yet, by its index in the batch: a
#: ``RetryableError`` (retry it), ``Deferred`` (run it again shortly) or a refusal
#: (``PermanentError``, ``InvalidEvent``, ``InvalidConfig``: dead-letter it)
Unfinished = dict[int, PrefsyncError]


class Deliverer:
    """Delivers a batch of events of one tenant to one connector.

    Every event ends in an outcome recorded here (delivered or skipped), or comes back in
    ``Unfinished`` for the task to retry, defer or dead-letter. Several events of one user
    are coalesced: the destination gets one change per user, holding for each property
    the newest value known (worker.records.state), and every event that contributed a value is
    delivered by it.
    """

    def __init__(
        self,
        state: StateStore,
        recorder: OutcomeRecorder,
        transport: BaseTransport,
        pacer: Pacer,
        rates: Mapping[str, float],
        max_sleep: float,
    ) -> None:
        self.state = state
        self.recorder = recorder
        self.transport = transport
        self.pacer = pacer
        self.rates = rates
        self.max_sleep = max_sleep

    def paced(self, config: ConnectorConfig, erasure: bool = False) -> BaseTransport:
        """The transport for one delivery: paced by the rate limit of its account (of its
        deletion endpoint, for ``erasure``, when the destination limits that apart)."""
        connector = config.connector
        if erasure and connector.erasure_rate is not None:
            bucket = account_key(f"{config.type_id}:erasure", config.credentials)
            rate = connector.erasure_rate
        else:
            bucket = account_key(config.type_id, config.credentials)
            rate = self.rates.get(config.type_id, connector.default_rate)
        return PacedTransport(
            self.transport, self.pacer, bucket, rate, connector.quota, self.max_sleep
        )

    def deliver(
        self,
        tenant: str,
        events: Sequence[PreferenceEvent],
        config: ConnectorConfig,
        enqueued_at: float | None = None,
        holds_it: bool = False,
    ) -> Unfinished:
        """Deliver ``events`` (all of ``tenant``) to ``config``'s destination;
        ``enqueued_at`` (when the producer enqueued them) is for the latency metric.
        ``holds_it``: the events are a refusal this connector reported; it is sent
        nothing, and recorded as told what they change (so no echo is sent either)."""
        self.state.older()  # decided before this release records anything (see there)
        recording = _Recording(tenant, config, events, enqueued_at, holds_it)
        ended: dict[int, Outcome] = {}
        plans: dict[int, Resolved] = {}
        first_copy: set[tuple[str, str]] = set()  # (user, event key): one event
        for index, event in enumerate(events):
            resolved = plan(event, config)
            if isinstance(resolved, Outcome):
                ended[index] = resolved
            elif (event.user, event.event_key) in first_copy:
                ended[index] = skipped(SkipReason.DUPLICATE, "a copy earlier in the batch")
            else:
                first_copy.add((event.user, event.event_key))
                plans[index] = resolved
        self._record(recording, ended, also=self.recorder.matches(tenant, config, plans.values()))

        by_user: dict[str, list[int]] = {}
        for index in plans:
            by_user.setdefault(events[index].user, []).append(index)
        # One destination call's worth of users at a time: each group is claimed (locked and
        # merged) and sent on its own, so that what a deferral or a failure leaves unsent
        # was never locked or merged (Brevo contacts named by ext_id, one call each, send
        # a few, then defer the rest).
        transport = _Counting(self.paced(config), recording.answers)
        lock_deadline = time.monotonic() + self.state.lock_wait
        unfinished: Unfinished = {}
        stop: DeliveryError | Deferred | None = None
        for users in config.connector.call_groups(list(by_user)):
            group = {user: by_user[user] for user in users}
            if stop is not None:
                unfinished |= {index: stop for indexes in group.values() for index in indexes}
                continue
            writes = {
                user: [_write(events[i], plans[i], config) for i in indexes]
                for user, indexes in group.items()
            }
            wait = max(0.0, lock_deadline - time.monotonic())
            folded = config.connector.folded_id
            with self.state.claim(tenant, config.id, writes, wait, folded) as claim:
                left = self._deliver_claimed(recording, plans, group, claim, transport)
            unfinished |= left
            stop = next((why for why in left.values() if _stops_the_batch(why)), None)
        return unfinished

    def _deliver_claimed(
        self,
        recording: _Recording,
        plans: Mapping[int, Resolved],
        group: Mapping[str, list[int]],
        claim: Claim,
        transport: BaseTransport,
    ) -> Unfinished:
        """The rest of ``deliver`` for one group of users, claimed: send each held user the
        properties its events own, then record every outcome, mark the events done and
        release the locks in one transaction."""
        events, config = recording.events, recording.config
        unfinished: Unfinished = {
            index: UserBusy("another delivery to this user is still in flight", wait=1.0)
            for user in claim.busy
            for index in group[user]
        }
        ended: dict[int, Outcome] = {}
        changes: list[Change] = []
        deletions: list[Change] = []  # sent apart: another endpoint, paced apart
        senders: dict[str, list[int]] = {}  # user -> the events their change carries
        delivered: dict[str, dict[str, Any]] = {}  # user -> the fed fields delivered
        for user in claim.held:
            values: dict[str, Value] = {}
            changed: dict[str, str] = {}  # mapped property name -> canonical, owned
            owners = claim.owners[user]
            erasure = self._erasure(config, events, group[user], claim, user, ended, unfinished)
            if erasure is not None:
                change, index = erasure
                senders[user] = [index]
                if change.erase == "delete":
                    deletions.append(change)
                elif change.fed:
                    changes.append(change)
                else:
                    why = "no mapping feeds a subscription to refuse"
                    ended[senders.pop(user)[0]] = skipped(SkipReason.NO_MAPPED_VALUES, why)
                continue
            for index in group[user]:
                event_key = events[index].event_key
                if (user, event_key) in claim.done:  # checked under the lock: a copy ended
                    ended[index] = skipped(SkipReason.DUPLICATE)
                    continue
                if (user, event_key) in claim.erased:
                    ended[index] = skipped(SkipReason.ERASED, _ERASED)
                    continue
                mine = {
                    name: (canonical, value)
                    for name, (canonical, value) in plans[index].items()
                    if owners.get(canonical) == event_key
                }
                if mine:
                    values |= {name: value for name, (_, value) in mine.items()}
                    changed |= {name: canonical for name, (canonical, _) in mine.items()}
                    senders.setdefault(user, []).append(index)
                else:
                    ended[index] = skipped(SkipReason.STALE)
            if user not in senders:
                continue
            try:
                fed = _fed_to_send(config, changed, claim.current[user], claim.delivered[user])
            except PermanentError as refused:
                unfinished |= dict.fromkeys(senders.pop(user), refused)
                continue
            change = Change(user, values, fed)
            if recording.holds_it:
                delivered[user] = dict(fed)
                ended |= dict.fromkeys(senders.pop(user), skipped(SkipReason.UNCHANGED, _HOLDS_IT))
            elif fed or own_fields(config, values):
                changes.append(change)
            else:
                why = "every field it feeds already holds this state at the destination"
                ended |= dict.fromkeys(senders.pop(user), skipped(SkipReason.UNCHANGED, why))
        try:
            answered: list[tuple[Change, Answer]] = []
            if changes:
                answers = config.connector.deliver_many(transport, config, changes)
                answered += zip(changes, answers, strict=True)
            if deletions:
                paced = self.paced(config, erasure=True)
                answers = config.connector.deliver_erasures(paced, config, deletions)
                answered += zip(deletions, answers, strict=True)
            for change, answer in answered:
                for index in senders[change.user]:
                    if isinstance(answer, Delivered):
                        if change.erase is None:
                            delivered[change.user] = dict(change.fed)
                        ended[index] = Outcome(
                            OutcomeKind.DELIVERED, status=answer.status, fields=answer.fields
                        )
                    elif isinstance(answer, Skipped):
                        ended[index] = skipped(SkipReason(answer.reason), answer.detail)
                    else:
                        unfinished[index] = answer
        finally:
            # Recorded as soon as answered, so a worker killed mid-batch repeats as little
            # as possible. A duplicate was marked done by the copy that ended; an event
            # the erasure outranks ends so again, and an erased person gets no new record.
            done_by_user: dict[str, list[str]] = {}
            for index in ended:
                event = events[index]
                ids = (event.user, event.event_key)
                if ids not in claim.done and ids not in claim.erased:
                    done_by_user.setdefault(event.user, []).append(event.event_key)
            self._record(
                recording,
                ended,
                also=lambda pipe: self.state.finish(claim, done_by_user, delivered, pipe),
            )
            claim.finished = True
        return unfinished

    def _erasure(
        self,
        config: ConnectorConfig,
        events: Sequence[PreferenceEvent],
        indexes: Sequence[int],
        claim: Claim,
        user: str,
        ended: dict[int, Outcome],
        unfinished: Unfinished,
    ) -> tuple[Change, int] | None:
        """The erasure change of a held user whose events include their erasure (not
        done yet) and the event that carries it; None when they do not. It goes alone:
        the user's other events end as the claim says (copies, erased) or, newer than
        it (a new life), come back once it is sent."""
        erasing = [
            index
            for index in indexes
            if events[index].erasure and (user, events[index].event_key) not in claim.done
        ]
        if not erasing:
            return None
        # Several erasures of one person in a batch: the newest carries it, the others
        # end with it as copies.
        carrier = max(erasing, key=lambda index: events[index].ordering.timestamp_us)
        change = erasure_change(config, user)
        assert change is not None  # plan() ended the erasures of "ignore"
        for index in indexes:
            key = (user, events[index].event_key)
            if index == carrier:
                continue
            if key in claim.done or index in erasing:
                ended[index] = skipped(SkipReason.DUPLICATE)
            elif key in claim.erased:
                ended[index] = skipped(SkipReason.ERASED, _ERASED)
            else:
                unfinished[index] = UserBusy("the person's erasure goes first", wait=1.0)
        return change, carrier

    def _record(
        self,
        recording: _Recording,
        ended: Mapping[int, Outcome],
        also: Callable[[Pipeline], object] | None = None,
    ) -> None:
        events = recording.events
        self.recorder.record(
            recording.tenant,
            recording.config.id,
            [Ended(events[i].event_key, events[i].user, outcome) for i, outcome in ended.items()],
            also=also,
            connector_type=recording.config.type_id,
            enqueued_at=recording.enqueued_at,
            answers=recording.answers,
        )
        recording.answers.clear()  # counted now; the next record counts only newer ones


@dataclass
class _Recording:
    """What every record of one batch's outcomes says besides the outcomes."""

    tenant: str
    config: ConnectorConfig
    events: Sequence[PreferenceEvent]
    enqueued_at: float | None
    #: the events are a refusal the connector reported (Deliverer.deliver)
    holds_it: bool = False
    #: the destination's answers (HTTP status, None for no answer) not yet recorded
    answers: Counter[int | None] = field(default_factory=Counter)


class _Counting(BaseTransport):
    """Sends through ``inner`` and counts every answer of the destination (for the
    metrics), then hands it on."""

    def __init__(self, inner: BaseTransport, answers: Counter[int | None]) -> None:
        self.inner = inner
        self.answers = answers

    def send(self, request: HttpRequest) -> HttpResponse:
        try:
            response = self.inner.send(request)
        except DeliveryError as exc:
            self.answers[exc.status] += 1
            raise
        self.answers[response.status] += 1
        return response


def _stops_the_batch(why: PrefsyncError) -> bool:
    """After a transient failure or a rate-limit deferral nothing more is sent: a
    destination that just failed a call would likely fail the next. A busy user or a
    refused change concerns only its own events."""
    return isinstance(why, RetryableError | Deferred) and not isinstance(why, UserBusy)


def _write(event: PreferenceEvent, resolved: Resolved, config: ConnectorConfig) -> Write:
    """What ``event`` tells the state. A user payload states every property it carries, so
    a ``user.updated`` also writes the values it did not change: they are not sent (that
    could undo a change made in the destination since), but a field they feed together
    with a changed one is computed from them."""
    values = dict(resolved.values())
    if event.previous is not None:
        for mapping in config.mappings:
            found = event.properties.get(mapping.value)
            if found is not None:
                values.setdefault(*found)
    return Write(event.event_key, event.ordering, values, erase=event.erasure)


def _fed_to_send(
    config: ConnectorConfig,
    changed: Mapping[str, str],
    current: Mapping[str, Value],
    delivered: Mapping[str, Any],
) -> dict[str, Any]:
    """The fed fields (worker.connectors.base.Feed) a change must carry: those fed by a
    property it changes, computed from the person's current value of every property
    feeding them, unless the connector was last told that same value.

    ``changed``: mapped property name -> canonical name, for the properties the change's
    events own; ``current``: canonical name -> newest known value."""
    feeding = {
        feed.field
        for mapping, feed in feeds(config)
        if feed is not None and mapping.value in changed
    }
    if not feeding:
        return {}
    return {
        name: value
        for name, value in fed_state(config, current, changed).items()
        if name in feeding and delivered.get(name) != value
    }


def fed_state(
    config: ConnectorConfig, current: Mapping[str, Value], spelled: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The value of every field ``config``'s mappings feed, from the person's current
    state (canonical name -> newest known value). ``spelled``: the canonical name of
    mapped property names an event at hand resolved (else ``canonical_name``)."""
    now: dict[str, Value] = {}
    for mapping in config.mappings:
        canonical = (spelled or {}).get(mapping.value) or canonical_name(mapping.value)
        if canonical in current:
            now[mapping.value] = current[canonical]
    return fed_fields(config, now)
