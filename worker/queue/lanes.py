"""Lanes: which Celery queue each prefsync message travels in.

Two lanes: ``live`` (the ingress, ``enqueue``, a small ``enqueue_many``, ``prefsync
enqueue``) and ``bulk`` (a large ``enqueue_many``, ``prefsync enqueue --bulk``, ``prefsync
dlq replay --all``/``--tenant``). In each lane, routing has one queue and each destination
type of the registry (worker.connectors) one delivery queue:

    live:  celery.braze  celery.sendinblue  celery
    bulk:  celery.bulk.braze  celery.bulk.sendinblue  celery.bulk

``celery`` is Celery's default queue: messages published before lanes existed, or by a
producer that knows nothing of them, are routed live. Every name starts with ``celery``, the
pattern the Redis users' rules already give the broker's keys (worker.infra.redis_acl).

A message's queue is a function of its task name and its keyword arguments alone
(``queue_for``): the lane and the destination type travel in the kwargs, which every later
publish of the message carries along (a retry, a deferral, a split, the outbox's copy, a
dead letter's replay), so each lands in the queue the first one did. Celery asks
``route_for`` (``task_routes``) at every publish, its own retries included; the outbox sweep
asks ``queue_for`` which queue to look at before copying a message.

``queues()`` lists them in the order a worker consuming several takes them (kombu's
``priority`` order, worker/queue/app.py): live before bulk, and in a lane the deliveries before
the routing, so that what is under way ends before more comes in.
"""

from __future__ import annotations

from typing import Any

from worker.connectors import CONNECTORS

LIVE = "live"
BULK = "bulk"
LANES = (LIVE, BULK)
DEFAULT_QUEUE = "celery"


def queue(lane: str, destination: str | None = None) -> str:
    """The queue of a lane, for a destination type (deliveries) or None (routing, and a
    delivery whose destination type is not known: it ends at once, in a dead letter)."""
    parts = [DEFAULT_QUEUE]
    if lane == BULK:
        parts.append(BULK)
    if destination in CONNECTORS:
        parts.append(destination)
    return ".".join(parts)


def queues(
    lanes: tuple[str, ...] = LANES,
    only: tuple[str, ...] = (),
    without: tuple[str, ...] = (),
) -> list[str]:
    """Every queue of ``lanes``, in the order a worker takes them. ``only``: just the
    delivery queues of these destination types (no routing); ``without``: all but the
    delivery queues of these."""
    kinds: tuple[str | None, ...] = only or (*(k for k in CONNECTORS if k not in without), None)
    return [queue(lane, kind) for lane in lanes for kind in kinds]


def in_lane(lane: str) -> dict[str, str]:
    """The kwargs that put a message in ``lane``: none for live, the default."""
    return {} if lane == LIVE else {"lane": lane}


def lane_of(kwargs: dict[str, Any] | None) -> str:
    """The lane a message's kwargs name: live unless they say bulk."""
    return BULK if (kwargs or {}).get("lane") == BULK else LIVE


def queue_for(name: str, kwargs: dict[str, Any] | None) -> str:
    """The queue of a prefsync task's message, from its name and kwargs."""
    kwargs = kwargs or {}
    destination = kwargs.get("destination") if name == "prefsync.deliver" else None
    return queue(lane_of(kwargs), destination)


def route_for(
    name: str, args: Any, kwargs: dict[str, Any] | None, options: dict[str, Any], **_: Any
) -> dict[str, str] | None:
    """Celery's ``task_routes``: prefsync's tasks by ``queue_for``; others as Celery would."""
    if not name.startswith("prefsync."):
        return None
    return {"queue": queue_for(name, kwargs)}
