"""The Celery tasks: thin shells around worker.delivery.pipeline.

``ScheduledTask`` is where Celery meets our delivery guarantee; it only wires together the
pieces that keep it, one concern a module:

    message        what a message carries: its payloads, the attempts made so far
    patience       waiting out a Redis restart rather than failing for it
    publishing     every publish through the outbox
    settling       dead-letter, defer or retry what a run did not end
    retrying       each retry at its offset from the first attempt
    splitting      a batch that failed as a whole becomes a message per event
    deadlettering  what fails for good is kept for an operator (Celery's task_failure)
    sweeps         the outbox sweep and the bulk feeder, on every worker's timer
    display        what Flower shows of a message: a summary, never a person

Task arguments are the event payload and ids only — never a credential, since Flower shows
arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded

from worker.core.errors import InvalidConfig, InvalidEvent, PermanentError
from worker.core.retries import clock
from worker.delivery import pipeline
from worker.delivery.deliverer import Unfinished
from worker.delivery.pipeline import Batch
from worker.delivery.runtime import runtime
from worker.infra.settings import get_settings
from worker.queue import lanes, patience, retrying, settling, splitting, sweeps
from worker.queue.app import app
from worker.queue.deadlettering import TRANSIENT, failed_for_good
from worker.queue.display import shown_without_people
from worker.queue.publishing import publish


class ScheduledTask(Task):
    # Inspection (Flower, `celery inspect active`) lists a task by its summary, never its
    # events (worker.queue.control).
    Request = "worker.queue.control:RequestWithoutPeople"
    autoretry_for = TRANSIENT
    # Expected endings: Celery logs them in one line, without a traceback (which is for bugs).
    throws = (PermanentError, InvalidEvent, InvalidConfig)
    max_retries = len(get_settings().retry_countdowns)
    # A pool child lost mid-task is retried by Celery itself after this long.
    default_retry_delay = get_settings().retry_countdowns[0]

    def before_start(self, task_id: str, args: tuple, kwargs: dict) -> None:
        self.request.attempt_started_at = clock()
        self.request.waits_end = patience.waits_end(get_settings().soft_time_limit)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            task_id=task_id,
            task=self.name,
            attempt=self.request.retries + 1,
            connector_id=args[1] if len(args) > 1 else None,
            events=len(args[0]) if args and isinstance(args[0], list) else None,
        )

    def run_batch(self, payloads: Any, work: Callable[[Batch], Unfinished]) -> str:
        """Parse this message's events, once, run ``work`` on them, then settle what did not
        end. A batch that overruns the soft time limit as a whole is split."""
        try:
            self.request.batch = batch = pipeline.parse_batch(runtime(), payloads)
            unfinished = work(batch)
        except SoftTimeLimitExceeded as exc:
            args, kwargs = list(self.request.args), self.request.kwargs
            if splitting.split(self, self.request.id, args, kwargs, exc):
                return "split: the batch ran out of time"
            raise
        return settling.settle(self, batch, unfinished)

    def retry(
        self,
        args=None,
        kwargs=None,
        exc=None,
        throw=True,
        eta=None,
        countdown=None,
        max_retries=None,
        events=None,
        **options,
    ):
        # The schedule sets the countdown and the kwargs (the attempts); an eta is not
        # taken. ``events``: those of ``args``, as this run parsed them (settling).
        celery_retry = partial(
            super().retry, exc=exc, throw=throw, max_retries=max_retries, **options
        )
        return retrying.retry(self, celery_retry, args, exc, countdown, events)

    def on_success(self, retval: Any, task_id: str, args: tuple, kwargs: dict) -> None:
        # Should Redis stay away longer, the sweep publishes the task again: all duplicates.
        until = patience.deadline_of(self.request)
        patience.patiently(lambda: runtime().outbox.done(task_id), until=until)


signals.before_task_publish.connect(shown_without_people)
app.steps["worker"].add(sweeps.OutboxSweep)
app.steps["worker"].add(sweeps.BulkFeeding)
app.steps["worker"].add(sweeps.SignalDraining)


@signals.task_failure.connect
def _dead_letter_failures(
    sender: Any = None,
    task_id: str = "",
    exception: BaseException | None = None,
    args: tuple = (),
    kwargs: dict | None = None,
    **_: Any,
) -> None:
    if isinstance(sender, ScheduledTask) and exception is not None:
        failed_for_good(sender, task_id, exception, list(args or ()), kwargs)


@app.task(bind=True, base=ScheduledTask, name="prefsync.route")
def route(
    self: ScheduledTask,
    payloads: list[Any],
    attempts: list | None = None,
    enqueued_at: float | None = None,
    lane: str = lanes.LIVE,
    origin: str | None = None,
    connectors: list[str] | None = None,
) -> str:
    """Validate a batch of preference events and fan it out: per tenant, one delivery
    batch per connector (per one of ``connectors`` when named), in the same lane, queued
    for the connector's destination type. ``enqueued_at`` (epoch seconds) goes along, for
    the latency; ``origin`` too: the connector a refusal came from
    (worker.delivery.refusals)."""
    carried: dict[str, Any] = {"enqueued_at": enqueued_at} if enqueued_at is not None else {}
    carried |= lanes.in_lane(lane)
    if origin is not None:
        carried["origin"] = origin

    def fan_out(batch: Batch) -> Unfinished:
        routed = pipeline.route(runtime(), batch, origin, connectors)
        for delivery in routed.deliveries:
            destination = runtime().destinations.type_of(delivery.tenant, delivery.connector_id)
            kwargs = {**carried, "destination": destination}
            publish(deliver, [delivery.payloads, delivery.connector_id], kwargs)
        return routed.unfinished

    return self.run_batch(payloads, fan_out)


@app.task(bind=True, base=ScheduledTask, name="prefsync.deliver")
def deliver(
    self: ScheduledTask,
    payloads: list[Any],
    connector_id: str,
    attempts: list | None = None,
    enqueued_at: float | None = None,
    lane: str = lanes.LIVE,
    destination: str | None = None,
    origin: str | None = None,
) -> str:
    """Deliver a batch of preference events to one connector. ``lane`` and
    ``destination`` (its type) only say which queue the message travels in; ``origin``
    is the connector a refusal came from."""
    return self.run_batch(
        payloads,
        lambda batch: pipeline.deliver(runtime(), batch, connector_id, enqueued_at, origin),
    )
