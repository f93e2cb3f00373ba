"""The steps the Celery tasks run, as plain functions of a Runtime (no Celery here).

route:        validate a payload and fan it out, one delivery per connector of its tenant;
deliver:      deliver one event to one connector and record the outcome;
dead_letter:  keep a delivery that ended in failure, with every attempt, for an operator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import structlog

from worker.deadletter import Attempt, DeadLetter, describe_payload_owner
from worker.errors import InvalidConfig, InvalidEvent, PermanentError, PrefsyncError
from worker.events import parse_event
from worker.logging import redact
from worker.outcomes import Outcome, OutcomeKind
from worker.runtime import Runtime

log = structlog.get_logger("prefsync.pipeline")


def route(rt: Runtime, payload: Any, enqueue_delivery: Callable[[Any, str], None]) -> int:
    """Validate ``payload`` and enqueue one delivery per connector of its tenant.

    Every connector is fanned out to, disabled or broken ones included, so that each
    (event, connector) pair ends in a recorded outcome of its own.
    """
    event = parse_event(payload, max_bytes=rt.settings.max_event_bytes)
    structlog.contextvars.bind_contextvars(
        tenant=event.tenant, event_key=event.event_key, user=event.user
    )
    connector_ids = rt.configs.ids(event.tenant)
    if not connector_ids:
        log.warning("tenant has no connectors: nothing to deliver")
    for connector_id in connector_ids:
        enqueue_delivery(payload, connector_id)
    return len(connector_ids)


def deliver(rt: Runtime, payload: Any, connector_id: str) -> Outcome:
    event = parse_event(payload, max_bytes=rt.settings.max_event_bytes)
    structlog.contextvars.bind_contextvars(
        tenant=event.tenant, event_key=event.event_key, user=event.user
    )
    config = rt.configs.get(event.tenant, connector_id)
    if config is None:
        raise PermanentError(
            f"connector {connector_id!r} is not configured for tenant {event.tenant!r}"
        )
    outcome = rt.deliverer.deliver(event, config)
    rt.recorder.record(
        tenant=event.tenant,
        connector_id=connector_id,
        event_key=event.event_key,
        user=event.user,
        outcome=outcome,
    )
    return outcome


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
        return f"connector config no longer valid: {describe_error(exc)}"
    if isinstance(exc, PermanentError):
        return f"refused by the destination: {describe_error(exc)}"
    if isinstance(exc, PrefsyncError):
        return f"gave up after {len(attempts)} attempts: {describe_error(exc)}"
    return f"unexpected error: {describe_error(exc)}"


def dead_letter(
    rt: Runtime,
    *,
    payload: Any,
    connector_id: str,
    attempts: Sequence[Attempt],
    exc: BaseException,
    now: float,
    once: str | None = None,
) -> DeadLetter | None:
    """Keep a failed delivery for an operator, and record the outcome; nothing when an
    entry for ``once`` was already kept (worker.deadletter)."""
    tenant, user = describe_payload_owner(payload)
    try:
        event_key = parse_event(payload).event_key
    except InvalidEvent:
        event_key = ""
    if connector_id and event_key and rt.state.is_done(tenant, connector_id, event_key):
        # The delivery ended after all: Celery can report a task it cut off (a lost Redis
        # connection, then a hard time limit) whose work was done. Nothing to hand over.
        log.warning("not dead-lettered: the delivery had ended", error=describe_error(exc))
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
        tenant=tenant, connector_id=connector_id, event_key=event_key, user=user, outcome=outcome
    )
    operator_action = getattr(exc, "operator_action", False)
    (log.error if operator_action else log.warning)(
        "dead-lettered",
        deadletter_id=entry.id,
        reason=entry.reason,
        attempts=len(attempts),
        operator_action=operator_action or None,
    )
    return entry
