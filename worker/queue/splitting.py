"""Splitting a batch that failed as a whole, for no reason tied to one event (a bug, a
hang, the time limit), into a message per event: a poison event then costs only itself.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery import Task

from worker.delivery.pipeline import describe_error
from worker.delivery.runtime import runtime
from worker.infra.settings import get_settings
from worker.queue.message import carried_attempts, once_key, payloads_of
from worker.queue.publishing import publish
from worker.records.state import key as state_key

log = structlog.get_logger("prefsync.tasks")


def split(
    task: Task, task_id: str, args: list[Any], kwargs: dict | None, why: BaseException
) -> bool:
    """Publish each event of the batch ``args`` carries as a message of ``task`` of its
    own. Each carries the attempts made before this run, which is not counted against it.
    False for a message of one event: nothing to split.

    Split once per run, however often Celery reports its end (a hard time limit is
    reported twice)."""
    payloads = payloads_of(args)
    if len(payloads) < 2:
        return False
    once = state_key("split", once_key(task_id, kwargs))
    if not runtime().redis.set(once, 1, nx=True, ex=get_settings().visibility_timeout):
        return True
    retries = len(carried_attempts(kwargs))
    for payload in payloads:
        publish(task, [[payload], *args[1:]], dict(kwargs or {}), retries=retries)
    log.warning("batch split", events=len(payloads), error=describe_error(why))
    return True
