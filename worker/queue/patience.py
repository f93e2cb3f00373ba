"""Waiting out a Redis outage rather than failing for it.

A task whose Redis writes fail while Redis restarts (a second or a few) waits for it; if
Redis stays away longer, or the soft time limit comes first, it puts its message back
(``put_back``) rather than acknowledge it or dead-letter its events. A task writing its
retry holds SIGTERM off until the retry is written (``cancellation_held``).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic, sleep
from typing import Any, TypeVar

import redis
import structlog
from celery.exceptions import Reject

from worker.delivery.pipeline import describe_error

log = structlog.get_logger("prefsync.tasks")

T = TypeVar("T")

# Redis unreachable (down, restarting, still loading its data, or hung).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# How long the writes that settle a failed attempt wait for Redis: a restart takes a second
# or a few, and a publish waits about as long (task_publish_retry_policy, worker/queue/app.py).
# Within a task, the waits also end this long before its soft time limit: a task waiting
# for Redis puts its message back rather than meet the time limits.
REDIS_PATIENCE = 15.0
WAITS_END_BEFORE_SOFT_LIMIT = 0.25


def waits_end(soft_limit: float) -> float:
    """When the waits for Redis of a run starting now end (monotonic): before its soft
    time limit."""
    return monotonic() + soft_limit - WAITS_END_BEFORE_SOFT_LIMIT


def deadline_of(request: Any) -> float | None:
    """When the waits of the run of ``request`` end (``waits_end``); None outside a run."""
    return getattr(request, "waits_end", None)


def patiently(write: Callable[[], T], until: float | None = None) -> T:
    """``write`` (idempotent Redis writes), tried again while Redis is unreachable, for up to
    REDIS_PATIENCE seconds and never past ``until`` (monotonic); then its error is raised."""
    deadline = monotonic() + REDIS_PATIENCE
    if until is not None:
        deadline = min(deadline, until)
    pause = 0.2
    while True:
        try:
            return write()
        except REDIS_DOWN:
            if monotonic() + pause > deadline:
                raise
            sleep(pause)
            pause = min(2 * pause, 2.0)


@contextmanager
def cancellation_held() -> Iterator[None]:
    """SIGTERM held off until the block is done, then let through.

    When its broker connection drops, the worker terminates (SIGTERM) the tasks still
    running, which could no longer acknowledge their messages, and leaves those messages
    to come back after the visibility timeout. A task writing its retry finishes that first,
    so the retry runs as soon as Redis is back."""
    previous = signal.getsignal(signal.SIGTERM)
    # Only the main thread takes signals (and a threads pool terminates no task); a handler
    # that was not set from Python cannot be put back.
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield
        return
    held: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if held:
            signal.raise_signal(signal.SIGTERM)


def put_back(why: BaseException) -> Reject:
    """The Reject that puts the running message back on the queue, unacknowledged: it runs
    again with the attempts it carries. With Redis still down, the worker cannot requeue it
    either: the message stays unacknowledged in Redis until the visibility timeout."""
    log.warning("message put back, to run again", error=describe_error(why))
    return Reject(why, requeue=True)
