"""The producer API: validate preference events, then enqueue them.

    from worker.producer import enqueue, enqueue_many
    task_id = enqueue(payload)            # raises worker.core.errors.InvalidEvent with the reason
    task_ids = enqueue_many(payloads)     # "event 3: <reason>"; up to MAX_BATCH a message
    task_ids = enqueue_many(payloads, bulk=True)  # a bulk load (lanes, feeder)

A payload is validated before it is enqueued, so a producer learns at once what is wrong
with it; the worker validates it again (a message can reach Redis some other way).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import redis
from celery.utils import uuid
from kombu.exceptions import OperationalError

from worker.core.errors import InvalidEvent, PrefsyncError
from worker.core.events import PreferenceEvent, parse_event, refuse_future
from worker.core.retries import clock
from worker.delivery.runtime import runtime
from worker.infra.redis_client import redacted_url
from worker.infra.settings import get_settings
from worker.queue import lanes
from worker.queue.publishing import publish
from worker.queue.tasks import deliver, route

# Events per message: Celery moves about 700 tasks/s here, but about 64,000 events/s when
# each message carries 100 events.
MAX_BATCH = 100
# An enqueue_many of more events than this is a bulk load unless told otherwise.
BULK_ABOVE = 10 * MAX_BATCH

# What an unreachable, stopped or hung Redis raises: from our outbox write (redis-py) or
# from Celery's publish once its retries are used up (kombu).
_BROKER_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
)


class BrokerUnavailable(PrefsyncError, redis.exceptions.ConnectionError, OperationalError):
    """Redis, the broker, could not take the event: it was not acknowledged; enqueue it
    again later (a copy that did get through is skipped as a duplicate).

    Also a redis ``ConnectionError`` and a kombu ``OperationalError``: producers written
    against the errors ``enqueue`` used to raise still catch it.
    """


def validate(payload: Any) -> PreferenceEvent:
    """Raise ``InvalidEvent`` naming what is wrong, or return the parsed event."""
    settings = get_settings()
    event = parse_event(payload, max_bytes=settings.max_event_bytes)
    refuse_future(event, runtime().clock.now(), settings.max_clock_skew)
    return event


def enqueue(payload: Any, lane: str = lanes.LIVE) -> str:
    """Validate ``payload`` and enqueue it for every connector of its tenant, in ``lane``
    (worker.queue.lanes); returns the task id. Raises ``InvalidEvent`` for a malformed event and
    ``BrokerUnavailable`` when Redis cannot take it (publishing retries for about ten
    seconds first; a Redis that refuses connections fails at once)."""
    validate(payload)
    return _publish_routes([payload], lane)[0]


def enqueue_many(
    payloads: Iterable[Any], bulk: bool | None = None, connectors: Sequence[str] | None = None
) -> list[str]:
    """Validate every payload, then enqueue them in order, ``MAX_BATCH`` events a message;
    returns one task id a message (none for no payloads).

    ``bulk``: whether they are a bulk load, which travels in the bulk lane and is shared
    with other tenants' bulk loads in turn (worker.queue.lanes, worker.records.feeder);
    None (default):
    when there are more than ``BULK_ABOVE`` payloads. Live events are never kept behind
    a bulk load. ``connectors``: deliver to those of the tenant's connectors only (a
    backfill for named connectors); None: to all of them.

    Raises ``InvalidEvent`` naming the first bad event by its 1-based position
    ("event 3: ...") before anything is enqueued. Raises ``BrokerUnavailable`` when Redis
    cannot take a message; its ``enqueued`` attribute counts the events enqueued before it
    stopped (whole messages, in order), so a caller can resume from the event after them.
    Resending everything is safe as well: the worker skips the copies as duplicates."""
    batch = list(payloads)
    tenants = []
    for number, payload in enumerate(batch, start=1):
        try:
            tenants.append(validate(payload).tenant)
        except InvalidEvent as exc:
            raise InvalidEvent(f"event {number}: {exc}") from exc
    only = {} if connectors is None else {"connectors": list(connectors)}
    if bulk or (bulk is None and len(batch) > BULK_ABOVE):
        return _park_routes(batch, tenants, only)
    return _publish_routes(batch, only=only)


def enqueue_validated(payloads: list[Any]) -> list[str]:
    """``enqueue_many`` for payloads that each passed ``validate`` already: the ingress
    validates every request as it comes, then enqueues those of concurrent requests
    together, and would otherwise pay for validating each event twice."""
    return _publish_routes(payloads)


def redeliver(payload: Any, connector_id: str, lane: str = lanes.LIVE) -> str:
    """Enqueue ``payload`` for one connector only (dead-letter replay), in ``lane``."""
    validate(payload)
    return _to_broker(partial(publish, deliver, [[payload], connector_id], lanes.in_lane(lane)))


def _publish_routes(
    payloads: list[Any], lane: str = lanes.LIVE, only: dict[str, Any] | None = None
) -> list[str]:
    # Carried to every delivery of these events, for the enqueue->delivered latency.
    enqueued = {"enqueued_at": clock(), **lanes.in_lane(lane), **(only or {})}
    return [
        _to_broker(partial(publish, route, [payloads[start : start + MAX_BATCH]], enqueued), start)
        for start in range(0, len(payloads), MAX_BATCH)
    ]


def _park_routes(payloads: list[Any], tenants: list[str], only: dict[str, Any]) -> list[str]:
    """Park ``payloads`` as route messages, ``MAX_BATCH`` events or fewer, a tenant's own
    (worker.records.feeder); each chunk of ``MAX_BATCH`` input events is parked whole or not."""
    kwargs = {"enqueued_at": clock(), **lanes.in_lane(lanes.BULK), **only}
    task_ids = []
    for start in range(0, len(payloads), MAX_BATCH):
        by_tenant: dict[str, list[Any]] = {}
        for payload, tenant in zip(
            payloads[start : start + MAX_BATCH], tenants[start : start + MAX_BATCH], strict=True
        ):
            by_tenant.setdefault(tenant, []).append(payload)
        for tenant, events in by_tenant.items():
            message = (uuid(), route.name, [events], kwargs)
            _to_broker(partial(runtime().feeder.park, tenant, [message]), start)
            task_ids.append(message[0])
    return task_ids


def _to_broker(publish: Callable[[], str], enqueued: int = 0) -> str:
    """``publish()``, or ``BrokerUnavailable`` saying ``enqueued`` events went before."""
    try:
        return publish()
    except _BROKER_ERRORS as exc:
        url = get_settings().redis_url
        reason = redacted_url(str(exc).rstrip(".") or type(exc).__name__)
        for part in url.split(";"):
            password = urlsplit(part).password
            if password:  # should a driver ever echo it outside a URL
                reason = reason.replace(password, "***")
        message = f"cannot reach Redis (the broker) at {redacted_url(url)}: {reason}"
        if enqueued:
            message += f"; the first {enqueued} event(s) were enqueued, the others were not"
        unavailable = BrokerUnavailable(message)
        unavailable.enqueued = enqueued
        raise unavailable from exc
