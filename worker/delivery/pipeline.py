"""The steps the Celery tasks run, as plain functions of a Runtime (no Celery here).

parse_batch:  parse a message's payloads once: each one's event, or why it is none;
route:        validate a batch of payloads and say where it fans out to: per tenant, one
              delivery batch per connector of the tenant;
deliver:      deliver a batch of events to one connector (worker.delivery.deliverer records
              outcomes);
dead_letter:  keep a delivery that ended in failure, with every attempt, for an operator.

``route`` and ``deliver`` take a message's payloads, or the ``Batch`` already parsed from
them in this process: a task parses its message once, and what it learnt (the events)
serves its log lines and dead letters too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from worker.core.errors import InvalidConfig, InvalidEvent, PermanentError, PrefsyncError
from worker.core.events import PreferenceEvent, parse_event, refuse_future
from worker.core.outcomes import Outcome, OutcomeKind, SkipReason
from worker.delivery.deliverer import Unfinished
from worker.delivery.refusals import PMP, tell_pmp
from worker.delivery.runtime import Runtime
from worker.infra.logging import redact
from worker.records.deadletter import Attempt, DeadLetter, describe_payload_owner
from worker.records.recorder import Ended

log = structlog.get_logger("prefsync.pipeline")


@dataclass(frozen=True, slots=True)
class Batch:
    """A message's payloads, parsed: ``events[i]`` is payload i's event, None when it is
    not a valid one (``invalid[i]`` says why)."""

    payloads: list[Any]
    events: list[PreferenceEvent | None]
    invalid: Unfinished

    def by_tenant(self) -> dict[str, dict[int, PreferenceEvent]]:
        """The valid events, by tenant and then by their index in the batch."""
        grouped: dict[str, dict[int, PreferenceEvent]] = {}
        for index, event in enumerate(self.events):
            if event is not None:
                grouped.setdefault(event.tenant, {})[index] = event
        return grouped


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery batch of the fan-out: a tenant's payloads for one of its connectors."""

    tenant: str
    connector_id: str
    payloads: list[Any]


@dataclass(frozen=True, slots=True)
class Routed:
    """What routing a batch came to: the deliveries to enqueue, and the payloads that are
    not valid events (by index), to be dead-lettered."""

    deliveries: list[Delivery]
    unfinished: Unfinished


def route(
    rt: Runtime,
    payloads: Any,
    origin: str | None = None,
    connectors: Sequence[str] | None = None,
) -> Routed:
    """Validate a batch of payloads and say, for each tenant in it, which delivery batch
    goes to each connector of that tenant; the invalid payloads come back, to be
    dead-lettered. The caller enqueues the deliveries.

    Every connector is fanned out to, disabled or broken ones included, so that each
    (event, connector) pair ends in a recorded outcome of its own. Events of a tool's
    refusal (``origin``: the connector it came from) go to the PMP as well.
    ``connectors``: only those of them (a backfill for named connectors,
    docs/two-way-consent.md#backfill).
    """
    batch = parsed(rt, payloads)
    deliveries = []
    for tenant, events in batch.by_tenant().items():
        connector_ids = rt.configs.ids(tenant)
        if connectors is not None:
            connector_ids = [cid for cid in connector_ids if cid in connectors]
        if not connector_ids:
            log.warning("tenant has no connectors: nothing to deliver", tenant=tenant)
        # Before the fan-out: from now on the person's older events are outranked, and
        # the erasure knows whose part is still to come (worker.records.erasure).
        for event in events.values():
            if event.erasure:
                rt.erasures.begin(tenant, event.user, event.ordering.timestamp_us, connector_ids)
        tenant_payloads = [batch.payloads[index] for index in events]
        deliveries += [Delivery(tenant, cid, tenant_payloads) for cid in connector_ids]
        if origin is not None:
            deliveries.append(Delivery(tenant, PMP, tenant_payloads))
    return Routed(deliveries, dict(batch.invalid))


def deliver(
    rt: Runtime,
    payloads: Any,
    connector_id: str,
    enqueued_at: float | None = None,
    origin: str | None = None,
) -> Unfinished:
    """Deliver a batch of payloads to one connector of their tenant (a batch may mix
    tenants: each gets its own config). What has not ended comes back by index.
    ``enqueued_at``: when the producer enqueued them, for the latency metric. ``origin``:
    the connector a refusal came from, which holds it already; ``PMP`` writes a refusal's
    consent event to the PMP (worker.delivery.refusals)."""
    batch = parsed(rt, payloads)
    unfinished = dict(batch.invalid)
    for tenant, by_index in batch.by_tenant().items():
        indexes, events = list(by_index), list(by_index.values())
        structlog.contextvars.bind_contextvars(tenant=tenant)
        if connector_id == PMP:
            unfinished |= tell_pmp(rt, by_index, batch.payloads, tenant, enqueued_at)
            continue
        try:
            config = rt.configs.get(tenant, connector_id)
        except InvalidConfig as exc:
            unfinished |= dict.fromkeys(indexes, exc)
            continue
        if config is None:
            missing = PermanentError(
                f"connector {connector_id!r} is not configured for tenant {tenant!r}"
            )
            unfinished |= dict.fromkeys(indexes, missing)
            continue
        holds = origin == connector_id
        left = rt.deliverer.deliver(tenant, events, config, enqueued_at, holds_it=holds)
        for index, why in left.items():
            unfinished[indexes[index]] = why
        for index, event in enumerate(events):
            if event.erasure and index not in left:
                rt.erasures.ended(tenant, event.user, connector_id, event.ordering.timestamp_us)
    return unfinished


def parse_batch(rt: Runtime, payloads: Any) -> Batch:
    """Parse the payloads a message carries, once (``InvalidEvent`` when it does not carry
    a list of them)."""
    batch = as_batch(payloads)
    events: list[PreferenceEvent | None] = []
    invalid: Unfinished = {}
    now, max_skew = rt.clock.now(), rt.settings.max_clock_skew
    for index, payload in enumerate(batch):
        try:
            event = parse_event(payload, max_bytes=rt.settings.max_event_bytes)
            refuse_future(event, now, max_skew)
        except InvalidEvent as exc:
            invalid[index] = exc
            event = None
        events.append(event)
    return Batch(batch, events, invalid)


def parsed(rt: Runtime, payloads: Any) -> Batch:
    """``payloads`` parsed: the Batch itself when it was parsed already."""
    return payloads if isinstance(payloads, Batch) else parse_batch(rt, payloads)


def as_batch(payloads: Any) -> list[Any]:
    """The events a message carries: a task's first argument is a list of payloads."""
    if not isinstance(payloads, list):
        raise InvalidEvent(f"a message must carry a list of events, not {type(payloads).__name__}")
    return payloads


def attempt_from(exc: BaseException, at: float) -> Attempt:
    return Attempt(at=at, status=getattr(exc, "status", None), error=describe_error(exc))


def describe_error(exc: BaseException) -> str:
    if isinstance(exc, PrefsyncError):
        return redact(str(exc))
    # An exception we did not expect is a bug or a poison event: keep its type to find it.
    return redact(f"{type(exc).__name__}: {exc}")


def final_reason(exc: BaseException, attempts: Sequence[Attempt]) -> str:
    if isinstance(exc, InvalidEvent):
        return f"invalid event: {describe_error(exc)}"
    if isinstance(exc, InvalidConfig):
        problems = "; ".join(describe_error(exc).splitlines())
        return (
            f"connector config no longer valid: {problems} (store a corrected config with "
            "`prefsync connectors put`, then replay these dead letters)"
        )
    if isinstance(exc, PermanentError):
        # Without a status no destination answered: prefsync itself refused to send it (a
        # contact identifier no request could name, a mapping that cannot take the value).
        refused_by = "the destination" if exc.status is not None else "prefsync, not sent"
        return f"refused by {refused_by}: {describe_error(exc)}"
    if isinstance(exc, PrefsyncError):
        return f"gave up after {len(attempts)} attempts: {describe_error(exc)}"
    return f"unexpected error: {describe_error(exc)}"


def connector_type(rt: Runtime, tenant: str, connector_id: str) -> str:
    """The type of a connector, for the metrics of a dead letter: "" for none (an event
    refused before it was routed), "unknown" when its config is gone or broken."""
    if not connector_id:
        return ""
    try:
        config = rt.configs.get(tenant, connector_id)
    except InvalidConfig:
        config = None
    return config.type_id if config is not None else "unknown"


def event_or_none(payload: Any) -> PreferenceEvent | None:
    """The event of ``payload``, or None when it is not one (for naming it, not delivering)."""
    try:
        return parse_event(payload)
    except InvalidEvent:
        return None


def _erased(rt: Runtime, event: PreferenceEvent, connector_id: str) -> bool:
    """Whether the person's erasure outranks ``event`` (dated at or before it) for this
    connector: for one that ignores letter case, the erasure of any spelling of the id."""
    moments = [rt.state.erased_at(event.tenant, event.user)]
    folded = rt.configs.folded_id(event.tenant, connector_id, event.user)
    if folded is not None:
        moments.append(rt.state.folded_erased_at(event.tenant, folded))
    return any(at is not None and event.ordering.timestamp_us <= at for at in moments)


def dead_letter(
    rt: Runtime,
    *,
    payload: Any,
    connector_id: str,
    attempts: Sequence[Attempt],
    exc: BaseException,
    now: float,
    once: str | None = None,
    event: PreferenceEvent | None = None,
) -> DeadLetter | None:
    """Keep a failed delivery for an operator, and record the outcome; nothing when an
    entry for ``once`` was already kept (worker.records.deadletter). ``event``: the
    payload's, when it was parsed already; else it is parsed here, without the size and
    clock checks, to name it if it can."""
    tenant, user = describe_payload_owner(payload)
    if event is None:
        event = event_or_none(payload)
    event_key = event.event_key if event is not None else ""
    if connector_id and event_key and rt.state.is_done(tenant, connector_id, user, event_key):
        # The delivery ended after all: Celery can report a task it cut off (a lost Redis
        # connection, then a hard time limit) whose work was done. Nothing to hand over.
        log.warning("not dead-lettered: the delivery had ended", error=describe_error(exc))
        return None
    if event is not None and not event.erasure and _erased(rt, event, connector_id):
        # Kept, a replay could bring the person back: it ends as the erasure says.
        why = describe_error(exc)
        outcome = Outcome(OutcomeKind.SKIPPED, reason=str(SkipReason.ERASED), detail=why)
        rt.recorder.record(tenant, connector_id, [Ended(event_key, user, outcome)])
        return None
    entry = rt.deadletters.add(
        tenant=tenant,
        connector_id=connector_id,
        user=user,
        event_key=event_key,
        payload=payload,
        attempts=list(attempts),
        reason=final_reason(exc, attempts),
        dead_lettered_at=now,
        once=once,
    )
    if entry is None:
        return None
    outcome = Outcome(OutcomeKind.DEAD_LETTERED, reason=entry.reason, status=attempts[-1].status)
    rt.recorder.record(
        tenant,
        connector_id,
        [Ended(event_key, user, outcome)],
        connector_type=connector_type(rt, tenant, connector_id),
    )
    if event is not None and event.erasure and connector_id:
        # A dead-lettered part ends it too; the dead letter of the deletion is kept.
        rt.erasures.ended(tenant, user, connector_id, event.ordering.timestamp_us)
    operator_action = getattr(exc, "operator_action", False)
    (log.error if operator_action else log.warning)(
        "dead-lettered",
        tenant=tenant,
        connector_id=connector_id,
        event_key=event_key,
        user=user,
        deadletter_id=entry.id,
        reason=entry.reason,
        attempts=len(attempts),
        operator_action=operator_action or None,
    )
    return entry
