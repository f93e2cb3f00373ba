"""The producer API: validate a preference event, then enqueue it.

    from worker.producer import enqueue
    task_id = enqueue(payload)      # raises worker.errors.InvalidEvent with the reason

A payload is validated before it is enqueued, so a producer learns at once what is wrong
with it; the worker validates it again (a message can reach Redis some other way).
"""

from __future__ import annotations

from typing import Any

from worker.events import PreferenceEvent, parse_event
from worker.settings import get_settings


def validate(payload: Any) -> PreferenceEvent:
    """Raise ``InvalidEvent`` naming what is wrong, or return the parsed event."""
    return parse_event(payload, max_bytes=get_settings().max_event_bytes)


def enqueue(payload: Any) -> str:
    """Validate ``payload`` and enqueue it for every connector of its tenant; returns the
    task id. Raises ``InvalidEvent`` for a malformed event and a kombu/redis error when
    the broker cannot be reached (after retrying for about ten seconds)."""
    from worker.tasks import publish, route

    validate(payload)
    return publish(route, [payload])


def redeliver(payload: Any, connector_id: str) -> str:
    """Enqueue ``payload`` for one connector only (dead-letter replay)."""
    from worker.tasks import deliver, publish

    validate(payload)
    return publish(deliver, [payload, connector_id])
