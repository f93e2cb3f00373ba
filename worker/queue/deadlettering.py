"""Dead-lettering: the events of a message that failed for good are kept for an operator,
one entry per event and run of the message (worker.delivery.pipeline.dead_letter).

``failed_for_good`` is Celery's ``task_failure`` signal for prefsync's tasks: the one place
that sees every final failure, exceptions raised in the task, retries exhausted, hard time
limits and lost workers out of retries.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded

from worker.core.errors import PrefsyncError, RetryableError
from worker.core.events import PreferenceEvent
from worker.core.retries import clock
from worker.delivery import pipeline
from worker.delivery.runtime import runtime
from worker.queue.message import (
    carried_attempts,
    connector_of,
    history,
    once_key,
    parsed_events,
    payloads_of,
)
from worker.queue.patience import REDIS_DOWN, patiently
from worker.queue.splitting import split
from worker.records.deadletter import Attempt

log = structlog.get_logger("prefsync.tasks")

# What a task retries (Celery's autoretry_for): a failure only once its retries are used up.
TRANSIENT = (RetryableError, SoftTimeLimitExceeded, *REDIS_DOWN)


def dead_letter(
    args: list[Any],
    attempts: list[Attempt],
    exc: BaseException,
    once: str,
    only: int | None = None,
    events: list[PreferenceEvent | None] | None = None,
) -> None:
    """Dead-letter every event ``args`` carries, or the one at index ``only``: one entry
    per event and ``once`` (a run of a message), whichever path reports it. ``events``:
    the payloads' events where this run parsed them already."""
    connector_id = connector_of(args)
    for index, payload in enumerate(payloads_of(args)):
        if only is not None and index != only:
            continue
        pipeline.dead_letter(
            runtime(),
            payload=payload,
            connector_id=connector_id,
            attempts=attempts,
            exc=exc,
            now=clock(),
            once=f"{once}:{index}",
            event=events[index] if events is not None else None,
        )


def retry_written(task_id: str, kwargs: dict | None) -> bool:
    """Whether the run of a message carrying ``kwargs`` wrote its retry: a retry is written
    to the outbox, with one attempt more, before it is published (worker.queue.retrying)."""
    entry = runtime().outbox.entry(task_id)
    if entry is None:
        return False
    return len(carried_attempts(entry["kwargs"])) > len(carried_attempts(kwargs))


def failed_for_good(
    task: Task, task_id: str, exception: BaseException, args: list[Any], kwargs: dict | None
) -> None:
    """Dead-letter the events of a message whose run failed for good, or split it.

    The worker's main process reports some failures (hard time limits, rejections) without
    the task's request, so the carried attempts are read from the signal's ``kwargs``. The
    Redis writes here wait for Redis (patiently): a failure is acknowledged whatever happens
    here, and left undone its events wait for the outbox sweep."""
    if isinstance(exception, Reject):
        # From a retry, which already dead-lettered the message (or put it back): the
        # worker reports it here a second time.
        return
    if patiently(lambda: retry_written(task_id, kwargs)):
        # Reported after the run had written its retry: a hard time limit the parent
        # reports late, for a child that ended while the worker reconnected to Redis
        # (its result waited). The retry carries the events on.
        error = pipeline.describe_error(exception)
        log.warning("failure reported after the retry was written: ignored", error=error)
        return
    # Transient errors that used up the schedule, and refusals, are the events' own;
    # anything else (a bug, a hard time limit, a lost worker) may be one event's doing.
    if not isinstance(exception, (PrefsyncError, *TRANSIENT)) and split(
        task, task_id, args, kwargs, exception
    ):
        patiently(lambda: runtime().outbox.done(task_id))
        return
    attempts = history(task, exception, kwargs)
    once = once_key(task_id, kwargs)
    events = parsed_events(task, payloads_of(args))
    patiently(lambda: dead_letter(args, attempts, exception, once, events=events))
    patiently(lambda: runtime().outbox.done(task_id))
