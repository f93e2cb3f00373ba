"""The Celery tasks: thin shells around worker.delivery.pipeline.

``ScheduledTask`` is where Celery meets our delivery guarantee: it carries the attempt
history in the message, aims every retry at its offset from the first attempt
(worker.core.retries), waits out a Redis restart rather than fail for it, and dead-letters
whatever fails for good. Task arguments are the event payload and ids only — never a
credential, since Flower shows arguments.
"""

from __future__ import annotations

import json
import random
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from time import monotonic, sleep
from typing import Any, TypeVar

import redis
import structlog
from celery import Task, bootsteps, signals
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.utils import uuid
from kombu.exceptions import OperationalError

from worker.core.errors import (
    Deferred,
    InvalidConfig,
    InvalidEvent,
    PermanentError,
    PrefsyncError,
    RetryableError,
)
from worker.core.events import EVENT_TYPES, parse_event
from worker.core.retries import clock, retry_countdown
from worker.delivery import pipeline
from worker.delivery.deliverer import Unfinished
from worker.delivery.pipeline import as_batch
from worker.delivery.runtime import runtime
from worker.infra.settings import get_settings
from worker.queue import lanes
from worker.queue.app import app
from worker.records import feeder, metrics
from worker.records.deadletter import Attempt, describe_payload_owner
from worker.records.state import key as state_key

log = structlog.get_logger("prefsync.tasks")

T = TypeVar("T")

# Redis unreachable (down, restarting, still loading its data, or hung).
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
# How long the writes that settle a failed attempt wait for Redis: a restart takes a second
# or a few, and a publish waits about as long (task_publish_retry_policy, worker/queue/app.py).
# Within a task, the waits also end this long before its soft time limit: a task waiting
# for Redis puts its message back rather than meet the time limits (docs/reliability.md).
REDIS_PATIENCE = 15.0
WAITS_END_BEFORE_SOFT_LIMIT = 0.25

TRANSIENT = (RetryableError, SoftTimeLimitExceeded, *REDIS_DOWN)


class ScheduledTask(Task):
    autoretry_for = TRANSIENT
    # Expected endings: Celery logs them in one line, without a traceback (which is for bugs).
    throws = (PermanentError, InvalidEvent, InvalidConfig)
    max_retries = len(get_settings().retry_countdowns)
    # A pool child lost mid-task is retried by Celery itself after this long.
    default_retry_delay = get_settings().retry_countdowns[0]

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        self.request.attempt_started_at = clock()
        soft_limit = get_settings().soft_time_limit
        self.request.waits_end = monotonic() + soft_limit - WAITS_END_BEFORE_SOFT_LIMIT
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            task_id=task_id,
            task=self.name,
            attempt=self.request.retries + 1,
            connector_id=args[1] if len(args) > 1 else None,
            events=len(args[0]) if args and isinstance(args[0], list) else None,
        )

    def attempts(self, exc: BaseException, kwargs: dict | None = None) -> list[Attempt]:
        """The attempts carried in the message (``kwargs``, else the running request's),
        plus the one that just failed.

        A retry Celery publishes itself after a pool child was lost cannot carry the lost
        attempt; each such attempt is counted as one without a record, so the history
        never claims fewer attempts than were made."""
        carried = carried_attempts(self.request.kwargs if kwargs is None else kwargs)
        earlier = [Attempt.model_validate(a) for a in carried]
        started = getattr(self.request, "attempt_started_at", None) or clock()
        unrecorded = Attempt(at=started, error="worker lost during this attempt (no record)")
        missing = max(0, (self.request.retries or 0) - len(earlier))
        return [*earlier, *[unrecorded] * missing, pipeline.attempt_from(exc, started)]

    def retry(
        self,
        args=None,
        kwargs=None,
        exc=None,
        throw=True,
        eta=None,
        countdown=None,
        max_retries=None,
        **options,
    ):
        settings = get_settings()
        attempts = self.attempts(exc)
        args = self.request.args if args is None else args
        if self.request.retries < len(settings.retry_countdowns):
            countdown = retry_countdown(
                retries_done=self.request.retries,
                first_attempt_at=attempts[0].at,
                now=clock(),
                countdowns=settings.retry_countdowns,
                jitter=settings.retry_jitter,
                retry_after=getattr(exc, "retry_after", None),
            )
            for ids in event_ids(args):
                log.info(
                    "retry scheduled",
                    countdown=round(countdown, 3),
                    error=attempts[-1].error,
                    **ids,
                )
        kwargs = {**(self.request.kwargs or {}), "attempts": [a.model_dump() for a in attempts]}
        celery_retry = partial(
            super().retry, args=args, kwargs=kwargs, exc=exc, throw=throw,
            countdown=countdown, max_retries=max_retries, **options,
        )  # fmt: skip
        if countdown is None:  # no retry left: Celery raises exc, a failure to dead-letter
            return celery_retry()
        # Until the retry is written (outbox, then broker), a Redis outage must not fail
        # the task: that would acknowledge its message and leave its events to the outbox
        # sweep, a visibility timeout (an hour by default) later. So the writes wait for
        # Redis; if it stays away longer, or the soft time limit comes first, the message
        # is put back instead (Reject with requeue: never acknowledged, never dead-lettered).
        try:
            with cancellation_held():
                patiently(
                    lambda: runtime().outbox.rescheduled(
                        self.request.id, list(args), kwargs, clock(), countdown, metrics.count_retry
                    ),
                    until=self.waits_end(),
                )
                return celery_retry()
        except (SoftTimeLimitExceeded, *REDIS_DOWN) as error:
            raise self.put_back(error) from None
        except Reject as rejected:
            if isinstance(rejected.reason, (OperationalError, *REDIS_DOWN)):
                # Celery gave up publishing with Redis unreachable (its retry policy):
                # Redis is to blame, not the events.
                raise self.put_back(rejected.reason) from None
            # Celery could not publish the retry and would drop the message: keep it as a
            # dead letter instead, or, if even that fails, put the message back.
            reason, once = rejected.reason, once_key(self.request.id, self.request.kwargs)
            try:
                patiently(lambda: self.dead_letter(args, attempts, reason, once), self.waits_end())
                patiently(lambda: runtime().outbox.done(self.request.id), self.waits_end())
            except Exception:
                raise self.put_back(reason) from None
            raise

    def put_back(self, why: BaseException) -> Reject:
        """The Reject that puts this message back on the queue, unacknowledged: it runs again
        with the attempts it carries. With Redis still down, the worker cannot requeue it
        either: the message stays unacknowledged in Redis until the visibility timeout."""
        log.warning("message put back, to run again", error=pipeline.describe_error(why))
        return Reject(why, requeue=True)

    def run_batch(self, work: Callable[[], Unfinished]) -> str:
        """Run ``work`` on this message's events, then settle what did not end. A batch
        that overruns the soft time limit as a whole is split (``split``)."""
        try:
            unfinished = work()
        except SoftTimeLimitExceeded as exc:
            if self.split(self.request.id, list(self.request.args), self.request.kwargs, exc):
                return "split: the batch ran out of time"
            raise
        return self.settle(unfinished)

    def split(self, task_id: str, args: list[Any], kwargs: dict | None, why: BaseException) -> bool:
        """Publish each event of a batch that failed as a whole, for no reason tied to one
        event (a bug, a hang, the time limit), as a message of its own: a poison event
        then costs only itself. Each carries the attempts made before this run, which is
        not counted against it. False for a message of one event: nothing to split.

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
            publish(self, [[payload], *args[1:]], dict(kwargs or {}), retries=retries)
        log.warning("batch split", events=len(payloads), error=pipeline.describe_error(why))
        return True

    def settle(self, unfinished: Unfinished) -> str:
        """Act on the events of this message that did not end in this run: dead-letter
        the refused ones now (and the failed ones, once retries are used up), defer the
        ones that must wait (a new message), retry the ones that failed transiently (the
        retry carries only them). Returns a summary."""
        args = list(self.request.args)
        payloads, rest = as_batch(args[0]), args[1:]
        refused, deferred, failed = {}, {}, {}
        for index, why in sorted(unfinished.items()):
            if isinstance(why, Deferred):
                deferred[index] = why
            elif isinstance(why, RetryableError) and self.request.retries < self.max_retries:
                failed[index] = why
            else:
                refused[index] = why
        once = once_key(self.request.id, self.request.kwargs)
        for index, why in refused.items():
            self.dead_letter(args, self.attempts(why), why, once, only=index)
        if deferred:
            soonest = min(deferred.values(), key=lambda why: why.wait)
            self.defer([[payloads[i] for i in deferred], *rest], soonest)
        summary = (
            f"{len(payloads) - len(unfinished)} ended, {len(refused)} dead-lettered, "
            f"{len(deferred)} deferred, {len(failed)} to retry"
        )
        if failed:
            # The reset furthest away: no retry may come before the destination's reset.
            worst = max(failed.values(), key=lambda why: getattr(why, "retry_after", None) or 0)
            raise self.retry(args=[[payloads[i] for i in failed], *rest], exc=worst)
        return summary

    def defer(self, args: list[Any], why: Deferred) -> None:
        """Run ``args`` again in ``why.wait`` seconds, as a new message carrying the same
        attempts and retries: waiting for a slot is not a failed attempt. The wait is
        capped like a rate-limited retry's, which the visibility timeout outlasts."""
        settings = get_settings()
        wait = min(why.wait, settings.rate_limit_max_wait)
        wait *= 1 + random.uniform(0, settings.retry_jitter)  # not all back at once
        publish(self, args, self.request.kwargs, countdown=wait, retries=self.request.retries)
        log.info("deferred", wait=round(wait, 3), why=str(why), events=len(args[0]))

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        # Should Redis stay away longer, the sweep publishes the task again: all duplicates.
        patiently(lambda: runtime().outbox.done(task_id), until=self.waits_end())

    def waits_end(self) -> float | None:
        """When this run's waits for Redis end (monotonic): before its soft time limit."""
        return getattr(self.request, "waits_end", None)

    def dead_letter(
        self,
        args: list[Any],
        attempts: list[Attempt],
        exc: BaseException,
        once: str,
        only: int | None = None,
    ) -> None:
        """Dead-letter every event ``args`` carries, or the one at index ``only``: one
        entry per event and ``once`` (a run of a message), whichever path reports it."""
        connector_id = args[1] if len(args) > 1 else ""
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
            )


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


def retry_written(task_id: str, kwargs: dict | None) -> bool:
    """Whether the run of a message carrying ``kwargs`` wrote its retry: ScheduledTask.retry
    writes it to the outbox, with one attempt more, before publishing it."""
    entry = runtime().outbox.entry(task_id)
    if entry is None:
        return False
    return len(carried_attempts(entry["kwargs"])) > len(carried_attempts(kwargs))


def payloads_of(args: list[Any] | tuple[Any, ...]) -> list[Any]:
    """The payloads a message carries; a message that is not a batch is kept whole."""
    batch = args[0] if args else None
    return batch if isinstance(batch, list) else [batch]


def event_ids(args: list[Any] | tuple[Any, ...]) -> list[dict[str, str]]:
    """Tenant, user and event key of each payload ``args`` carries, for log lines."""
    ids = []
    for payload in payloads_of(args):
        tenant, user = describe_payload_owner(payload)
        try:
            event_key = parse_event(payload).event_key
        except InvalidEvent:
            event_key = ""
        ids.append({"tenant": tenant, "user": user, "event_key": event_key})
    return ids


def carried_attempts(kwargs: dict | None) -> list[Any]:
    return (kwargs or {}).get("attempts") or []


def once_key(task_id: str, kwargs: dict | None) -> str:
    """One dead letter per run of a message: Celery reports a hard time limit twice (the
    job's TimeLimitExceeded result, then the timeout callback), with the same task id and
    carried attempts."""
    return f"{task_id}:{len(carried_attempts(kwargs))}"


def publish(
    task: ScheduledTask,
    args: list[Any],
    kwargs: dict[str, Any] | None = None,
    countdown: float = 0.0,
    retries: int = 0,
    task_id: str | None = None,
) -> str:
    """Publish a task, written to the outbox first (worker.records.outbox says why), into the queue
    its kwargs name (worker.queue.lanes.route_for, which Celery asks)."""
    task_id = task_id or uuid()
    kwargs = kwargs or {}
    runtime().outbox.add(task_id, task.name, args, kwargs, clock(), wait=countdown)
    task.apply_async(
        args=args, kwargs=kwargs, task_id=task_id, countdown=countdown or None, retries=retries
    )
    return task_id


def _publish_again(task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    # The attempts carried in kwargs say how many retries the lost message had used.
    retries = len(kwargs.get("attempts") or [])
    app.tasks[name].apply_async(args=args, kwargs=kwargs, task_id=task_id, retries=retries)
    log.warning("published again: not ended by its due time", task_id=task_id, task=name)


@signals.before_task_publish.connect
def _shown_without_people(
    sender: str | None = None, body: Any = None, headers: Any = None, **_: Any
) -> None:
    """Flower (and ``celery inspect``) show a task's arguments as its message's ``argsrepr``
    and ``kwargsrepr``. Ours carry events, with people's ids (often email addresses), so
    every publish of a prefsync task (first, retry, outbox) shows a summary instead."""
    if not isinstance(headers, dict) or not str(sender or "").startswith("prefsync."):
        return
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, tuple | list) and len(body) > 1 else ((), {})
    )
    headers["argsrepr"] = describe_arguments(list(args or ()))
    headers["kwargsrepr"] = describe_keywords(dict(kwargs or {}))


def describe_arguments(args: list[Any]) -> str:
    """A task's arguments as an operator may see them: how many events, of which types
    and tenants, their consent event ids, and the connector; never a user id or a payload."""
    payloads = args[0] if args and isinstance(args[0], list) else []
    types: dict[str, int] = {}
    tenants: set[str] = set()
    ids: list[str] = []
    for payload in payloads:
        tenant, _ = describe_payload_owner(payload)
        tenants.add(tenant or "?")
        kind = payload.get("type") if isinstance(payload, dict) else None
        kind = kind if isinstance(kind, str) and kind in EVENT_TYPES else "invalid"
        types[kind] = types.get(kind, 0) + 1
        # A user payload's entity id is the person's id at the PMP: not shown.
        entity = _entity(payload) if kind.startswith("event.") else None
        if entity is not None and isinstance(entity.get("id"), str) and len(ids) < 5:
            ids.append(entity["id"][:64])
    shown = {
        "events": len(payloads),
        "types": types,
        "tenants": sorted(tenants)[:5],
        "event_ids": ids,
    }
    if len(args) > 1 and isinstance(args[1], str):
        shown["connector"] = args[1]
    return json.dumps(shown, ensure_ascii=False)


def describe_keywords(kwargs: dict[str, Any]) -> str:
    """Keyword arguments as shown: the attempts carried are counted, not listed (their
    errors are the destinations' words)."""
    shown = {
        name: len(value) if name == "attempts" and isinstance(value, list) else value
        for name, value in kwargs.items()
        if name != "attempts" or value
    }
    return json.dumps(shown, default=str)


def _entity(payload: Any) -> dict[str, Any] | None:
    try:
        parameters = payload["parameters"]
        entity = parameters.get("entity") or parameters.get("new_entity")
    except (TypeError, KeyError, AttributeError):
        return None
    return entity if isinstance(entity, dict) else None


class OutboxSweep(bootsteps.StartStopStep):
    """Each worker sweeps the outbox for tasks the broker lost, every little while."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref = None

    def start(self, worker: Any) -> None:
        interval = max(1.0, min(60.0, get_settings().visibility_timeout / 4))
        self.tref = worker.timer.call_repeatedly(interval, self.sweep)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()

    def sweep(self) -> None:
        try:
            waiting = queue_lengths(lanes.queues())
            runtime().outbox.sweep(
                clock(),
                _publish_again,
                queued=lambda entry: waiting[lanes.queue_for(entry["name"], entry["kwargs"])],
            )
        except redis.exceptions.RedisError as exc:  # the next round tries again
            log.warning("outbox sweep failed", error=f"{type(exc).__name__}: {exc}")


class BulkFeeding(bootsteps.StartStopStep):
    """Each worker feeds parked bulk loads into the bulk lane, fairly between tenants
    (worker.records.feeder), every little while."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref = None

    def start(self, worker: Any) -> None:
        self.tref = worker.timer.call_repeatedly(feeder.INTERVAL, feed_bulk)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


def feed_bulk() -> int:
    """One feeding round; returns how many parked messages were published."""
    try:
        queued = sum(queue_lengths(lanes.queues((lanes.BULK,))).values())
        return runtime().feeder.feed(_publish_parked, queued)
    except (redis.exceptions.RedisError, OperationalError) as exc:  # the next round tries again
        log.warning("bulk feeding failed", error=f"{type(exc).__name__}: {exc}")
        return 0


def _publish_parked(task_id: str, name: str, args: list[Any], kwargs: dict[str, Any]) -> None:
    publish(app.tasks[name], args, kwargs, task_id=task_id)


def queue_lengths(names: list[str]) -> dict[str, int]:
    """Messages waiting in each of the broker's queues ``names``."""
    with runtime().redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        return dict(zip(names, pipe.execute(), strict=True))


app.steps["worker"].add(OutboxSweep)
app.steps["worker"].add(BulkFeeding)


@signals.task_failure.connect
def _dead_letter_failures(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    **_: Any,
) -> None:
    # task_failure is the one place that sees every final failure: exceptions raised in
    # the task, retries exhausted, hard time limits and lost workers out of retries.
    # The worker's parent process sends some of them (hard time limits, rejections)
    # without the task's request, so the carried attempts are read from the signal.
    # A Reject comes from ScheduledTask.retry, which already dead-lettered the message
    # (or requeued it): the worker reports it here a second time.
    # The Redis writes here wait for Redis (patiently): a failure is acknowledged whatever
    # happens here, and left undone its events wait for the outbox sweep.
    if isinstance(sender, ScheduledTask) and exception is not None:
        if isinstance(exception, Reject):
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
        if not isinstance(exception, (PrefsyncError, *TRANSIENT)) and sender.split(
            task_id, list(args or ()), kwargs, exception
        ):
            patiently(lambda: runtime().outbox.done(task_id))
            return
        attempts = sender.attempts(exception, kwargs)
        once = once_key(task_id, kwargs)
        patiently(lambda: sender.dead_letter(list(args or ()), attempts, exception, once))
        patiently(lambda: runtime().outbox.done(task_id))


@app.task(bind=True, base=ScheduledTask, name="prefsync.route")
def route(
    self: ScheduledTask,
    payloads: list[Any],
    attempts: list | None = None,
    enqueued_at: float | None = None,
    lane: str = lanes.LIVE,
) -> str:
    """Validate a batch of preference events and fan it out: per tenant, one delivery
    batch per connector, in the same lane, queued for the connector's destination type.
    ``enqueued_at`` (epoch seconds) goes along, for the latency."""
    carried: dict[str, Any] = {"enqueued_at": enqueued_at} if enqueued_at is not None else {}
    carried |= lanes.in_lane(lane)

    def fan_out(batch: list[Any], connector_id: str) -> None:
        tenant, _ = describe_payload_owner(batch[0])
        destination = runtime().destinations.type_of(tenant, connector_id)
        publish(deliver, [batch, connector_id], {**carried, "destination": destination})

    return self.run_batch(lambda: pipeline.route(runtime(), payloads, fan_out))


@app.task(bind=True, base=ScheduledTask, name="prefsync.deliver")
def deliver(
    self: ScheduledTask,
    payloads: list[Any],
    connector_id: str,
    attempts: list | None = None,
    enqueued_at: float | None = None,
    lane: str = lanes.LIVE,
    destination: str | None = None,
) -> str:
    """Deliver a batch of preference events to one connector. ``lane`` and
    ``destination`` (its type) only say which queue the message travels in."""
    return self.run_batch(lambda: pipeline.deliver(runtime(), payloads, connector_id, enqueued_at))
