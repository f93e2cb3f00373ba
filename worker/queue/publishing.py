"""Publishing prefsync messages: each written to the outbox first (worker.records.outbox says
why), then to the broker, into the queue its kwargs name (worker.queue.lanes.route_for,
which Celery asks). The producer, the tasks (a fan-out, a deferral, a split) and the
worker's sweeps (a message the broker lost, a parked bulk message) all publish here.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.utils import uuid

from worker.core.retries import clock
from worker.delivery.runtime import runtime
from worker.queue.app import app

log = structlog.get_logger("prefsync.tasks")


def publish(
    task: Task,
    args: list[Any],
    kwargs: dict[str, Any] | None = None,
    countdown: float = 0.0,
    retries: int = 0,
    task_id: str | None = None,
) -> str:
    """Publish a message of ``task``, through the outbox; returns its task id."""
    task_id = task_id or uuid()
    kwargs = kwargs or {}
    runtime().outbox.add(task_id, task.name, args, kwargs, clock(), wait=countdown)
    task.apply_async(
        args=args, kwargs=kwargs, task_id=task_id, countdown=countdown or None, retries=retries
    )
    return task_id


def publish_again(task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Publish again a message of the outbox not ended by its due time (it is there still)."""
    # The attempts carried in kwargs say how many retries the lost message had used.
    retries = len(kwargs.get("attempts") or [])
    app.tasks[name].apply_async(args=args, kwargs=kwargs, task_id=task_id, retries=retries)
    log.warning("published again: not ended by its due time", task_id=task_id, task=name)


def publish_parked(task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    """Publish a bulk message the producer parked (worker.records.feeder), under its id."""
    publish(app.tasks[name], args, kwargs, task_id=task_id)
