"""The producer API: validate a preference event, then enqueue it.

    from worker.producer import enqueue
    task_id = enqueue(payload)      # raises worker.errors.InvalidEvent with the reason

A payload is validated before it is enqueued, so a producer learns at once what is wrong
with it; the worker validates it again (a message can reach Redis some other way).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import redis
from kombu.exceptions import OperationalError

from worker.errors import BrokerUnavailable
from worker.events import PreferenceEvent, parse_event
from worker.redis_client import redacted_url
from worker.settings import get_settings

# What an unreachable, stopped or hung Redis raises: from our outbox write (redis-py) or
# from Celery's publish once its retries are used up (kombu).
_BROKER_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
)


def validate(payload: Any) -> PreferenceEvent:
    """Raise ``InvalidEvent`` naming what is wrong, or return the parsed event."""
    return parse_event(payload, max_bytes=get_settings().max_event_bytes)


def enqueue(payload: Any) -> str:
    """Validate ``payload`` and enqueue it for every connector of its tenant; returns the
    task id. Raises ``InvalidEvent`` for a malformed event and ``BrokerUnavailable`` when
    Redis cannot take it (publishing retries for about ten seconds first; a Redis that
    refuses connections fails at once)."""
    from worker.tasks import publish, route

    validate(payload)
    return _to_broker(lambda: publish(route, [payload]))


def redeliver(payload: Any, connector_id: str) -> str:
    """Enqueue ``payload`` for one connector only (dead-letter replay)."""
    from worker.tasks import deliver, publish

    validate(payload)
    return _to_broker(lambda: publish(deliver, [payload, connector_id]))


def _to_broker(publish: Callable[[], str]) -> str:
    try:
        return publish()
    except _BROKER_ERRORS as exc:
        url = get_settings().redis_url
        reason = redacted_url(str(exc).rstrip(".") or type(exc).__name__)
        for part in url.split(";"):
            password = urlsplit(part).password
            if password:  # should a driver ever echo it outside a URL
                reason = reason.replace(password, "***")
        raise BrokerUnavailable(
            f"cannot reach Redis (the broker) at {redacted_url(url)}: {reason}"
        ) from exc
