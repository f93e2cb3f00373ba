"""Settling a run: acting on the events of a message that did not end in it. A refused
event is dead-lettered now (a failed one too, once retries are used up), one that must
wait is deferred (a new message), and the ones that failed transiently are retried.
"""

from __future__ import annotations

import random
from typing import Any

import structlog
from celery import Task

from worker.core.errors import Deferred, RetryableError
from worker.delivery.deliverer import Unfinished
from worker.delivery.pipeline import Batch
from worker.infra.settings import get_settings
from worker.queue.deadlettering import dead_letter
from worker.queue.message import history, once_key
from worker.queue.publishing import publish

log = structlog.get_logger("prefsync.tasks")


def settle(task: Task, batch: Batch, unfinished: Unfinished) -> str:
    """Dead-letter, defer or retry the events of ``batch`` (the running message's) that
    did not end (``unfinished``); a retry carries only those it retries. Returns a
    summary."""
    request = task.request
    args = list(request.args)
    payloads, rest = batch.payloads, args[1:]
    refused, deferred, failed = {}, {}, {}
    for index, why in sorted(unfinished.items()):
        if isinstance(why, Deferred):
            deferred[index] = why
        elif isinstance(why, RetryableError) and request.retries < task.max_retries:
            failed[index] = why
        else:
            refused[index] = why
    once = once_key(request.id, request.kwargs)
    for index, why in refused.items():
        dead_letter(args, history(task, why), why, once, only=index, events=batch.events)
    if deferred:
        soonest = min(deferred.values(), key=lambda why: why.wait)
        defer(task, [[payloads[i] for i in deferred], *rest], soonest)
    summary = (
        f"{len(payloads) - len(unfinished)} ended, {len(refused)} dead-lettered, "
        f"{len(deferred)} deferred, {len(failed)} to retry"
    )
    if failed:
        # The reset furthest away: no retry may come before the destination's reset.
        worst = max(failed.values(), key=lambda why: getattr(why, "retry_after", None) or 0)
        retried = [[payloads[i] for i in failed], *rest]
        raise task.retry(args=retried, exc=worst, events=[batch.events[i] for i in failed])
    return summary


def defer(task: Task, args: list[Any], why: Deferred) -> None:
    """Run ``args`` again in ``why.wait`` seconds, as a new message carrying the same
    attempts and retries: waiting for a slot is not a failed attempt. The wait is capped
    like a rate-limited retry's, which the visibility timeout outlasts."""
    settings = get_settings()
    wait = min(why.wait, settings.rate_limit_max_wait)
    wait *= 1 + random.uniform(0, settings.retry_jitter)  # not all back at once
    publish(task, args, task.request.kwargs, countdown=wait, retries=task.request.retries)
    log.info("deferred", wait=round(wait, 3), why=str(why), events=len(args[0]))
