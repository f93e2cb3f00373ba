"""What a prefsync message carries, read from its arguments: the payloads (``args[0]``),
the connector (``args[1]``, deliveries only) and, in its kwargs, the attempts made before
this run. A retry carries one attempt more; a deferral or a split carries the same ones.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from worker.core.events import PreferenceEvent
from worker.core.retries import clock
from worker.delivery.pipeline import Batch, attempt_from
from worker.records.deadletter import Attempt

LOST = "worker lost during this attempt (no record)"


def payloads_of(args: list[Any] | tuple[Any, ...]) -> list[Any]:
    """The payloads a message carries; a message that is not a batch is kept whole."""
    batch = args[0] if args else None
    return batch if isinstance(batch, list) else [batch]


def connector_of(args: list[Any] | tuple[Any, ...]) -> str:
    """The connector a delivery message is for; "" for a route message."""
    return args[1] if len(args) > 1 else ""


def carried_attempts(kwargs: dict | None) -> list[Any]:
    return (kwargs or {}).get("attempts") or []


def once_key(task_id: str, kwargs: dict | None) -> str:
    """One dead letter per run of a message: Celery reports a hard time limit twice (the
    job's TimeLimitExceeded result, then the timeout callback), with the same task id and
    carried attempts."""
    return f"{task_id}:{len(carried_attempts(kwargs))}"


def history(task: Task, exc: BaseException, kwargs: dict | None = None) -> list[Attempt]:
    """The attempts carried in the message (``kwargs``, else the running request's), plus
    the one that just failed.

    A retry Celery publishes itself after a pool child was lost cannot carry the lost
    attempt; each such attempt is counted as one without a record, so the history never
    claims fewer attempts than were made."""
    request = task.request
    carried = carried_attempts(request.kwargs if kwargs is None else kwargs)
    earlier = [Attempt.model_validate(a) for a in carried]
    started = getattr(request, "attempt_started_at", None) or clock()
    unrecorded = Attempt(at=started, error=LOST)
    missing = max(0, (request.retries or 0) - len(earlier))
    return [*earlier, *[unrecorded] * missing, attempt_from(exc, started)]


def parsed_events(task: Task, payloads: list[Any]) -> list[PreferenceEvent | None] | None:
    """The events of ``payloads`` as this run parsed them (``Batch.events``), when they are
    its whole message; None otherwise (the worker's main process reporting a failure did
    not parse them)."""
    batch: Batch | None = getattr(task.request, "batch", None)
    if batch is None or batch.payloads is not payloads:
        return None
    return batch.events
