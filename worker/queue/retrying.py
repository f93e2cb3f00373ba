"""The retry of a failed attempt, on the schedule: every retry is aimed at its offset from
the first attempt (worker.core.retries), carries the attempts made so far, and is written
to the outbox before it is published.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError

from worker.core.events import PreferenceEvent
from worker.core.retries import clock, retry_countdown
from worker.delivery.runtime import runtime
from worker.infra.settings import get_settings
from worker.queue.deadlettering import dead_letter
from worker.queue.display import event_ids
from worker.queue.message import history, once_key, parsed_events, payloads_of
from worker.queue.patience import REDIS_DOWN, cancellation_held, deadline_of, patiently, put_back
from worker.records import metrics

log = structlog.get_logger("prefsync.tasks")


def retry(
    task: Task,
    celery_retry: Callable[..., Any],
    args: list[Any] | None,
    exc: BaseException | None,
    countdown: float | None,
    events: list[PreferenceEvent | None] | None = None,
) -> Any:
    """Retry the running message of ``task`` (its ``args``, or those given) through
    ``celery_retry`` (Celery's ``Task.retry``), ``countdown`` seconds from now as the
    schedule says; with no retry left, Celery raises ``exc``: a failure to dead-letter.
    ``events``: the events of ``args`` where this run parsed them already."""
    request = task.request
    settings = get_settings()
    attempts = history(task, exc)
    if args is None:
        args = request.args
        events = parsed_events(task, payloads_of(args))
    if request.retries < len(settings.retry_countdowns):
        countdown = retry_countdown(
            retries_done=request.retries,
            first_attempt_at=attempts[0].at,
            now=clock(),
            countdowns=settings.retry_countdowns,
            jitter=settings.retry_jitter,
            retry_after=getattr(exc, "retry_after", None),
        )
        for ids in event_ids(args, events):
            log.info(
                "retry scheduled", countdown=round(countdown, 3), error=attempts[-1].error, **ids
            )
    kwargs = {**(request.kwargs or {}), "attempts": [a.model_dump() for a in attempts]}
    celery_retry = partial(celery_retry, args=args, kwargs=kwargs, countdown=countdown)
    if countdown is None:
        return celery_retry()
    # Until the retry is written (outbox, then broker), a Redis outage must not fail
    # the task: that would acknowledge its message and leave its events to the outbox
    # sweep, a visibility timeout (an hour by default) later. So the writes wait for
    # Redis; if it stays away longer, or the soft time limit comes first, the message
    # is put back instead (Reject with requeue: never acknowledged, never dead-lettered).
    until = deadline_of(request)
    try:
        with cancellation_held():
            patiently(
                lambda: runtime().outbox.rescheduled(
                    request.id, list(args), kwargs, clock(), countdown, metrics.count_retry
                ),
                until=until,
            )
            return celery_retry()
    except (SoftTimeLimitExceeded, *REDIS_DOWN) as error:
        raise put_back(error) from None
    except Reject as rejected:
        if isinstance(rejected.reason, (OperationalError, *REDIS_DOWN)):
            # Celery gave up publishing with Redis unreachable (its retry policy):
            # Redis is to blame, not the events.
            raise put_back(rejected.reason) from None
        # Celery could not publish the retry and would drop the message: keep it as a
        # dead letter instead, or, if even that fails, put the message back.
        reason, once = rejected.reason, once_key(request.id, request.kwargs)
        try:
            patiently(lambda: dead_letter(args, attempts, reason, once, events=events), until)
            patiently(lambda: runtime().outbox.done(request.id), until)
        except Exception:
            raise put_back(reason) from None
        raise
