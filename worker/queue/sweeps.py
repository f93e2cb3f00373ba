"""What every worker does every little while, beside running tasks (Celery bootsteps on the
worker's timer): sweep the outbox for messages the broker lost, feed parked bulk loads
into the bulk lane, and act on the refusals the tools reported (worker.delivery.refusals).
"""

from __future__ import annotations

from typing import Any

import redis
import structlog
from celery import bootsteps
from kombu.exceptions import OperationalError

from worker.core.retries import clock
from worker.delivery.refusals import SignalDrain
from worker.delivery.runtime import runtime
from worker.infra.settings import get_settings
from worker.queue import lanes
from worker.queue.app import app
from worker.queue.publishing import publish, publish_again, publish_parked
from worker.records import feeder

log = structlog.get_logger("prefsync.tasks")


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
                publish_again,
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


class SignalDraining(bootsteps.StartStopStep):
    """Each worker takes the refusals of the signals inbox, every second: each becomes an
    event of the live lane, published as a producer's is, with its origin connector."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        self.tref = None
        self.drain: SignalDrain | None = None

    def start(self, worker: Any) -> None:
        self.drain = SignalDrain(runtime(), publish_refusal)
        try:  # what a worker that died left half done
            self.drain.inbox.recover()
        except redis.exceptions.RedisError as exc:  # the next start tries again
            log.warning("refusals not recovered", error=f"{type(exc).__name__}: {exc}")
        self.tref = worker.timer.call_repeatedly(1.0, self.round)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()

    def round(self) -> None:
        try:
            if self.drain is not None:
                self.drain.round()
        except (redis.exceptions.RedisError, OperationalError) as exc:  # next round again
            log.warning("refusals not taken", error=f"{type(exc).__name__}: {exc}")


def publish_refusal(payload: dict[str, Any], origin: str) -> str:
    """Publish a refusal's event as ``worker.producer.enqueue`` does, in the live lane,
    with the connector it came from."""
    kwargs = {"enqueued_at": clock(), **lanes.in_lane(lanes.LIVE), "origin": origin}
    return publish(app.tasks["prefsync.route"], [[payload]], kwargs)


def feed_bulk() -> int:
    """One feeding round; returns how many parked messages were published."""
    try:
        queued = sum(queue_lengths(lanes.queues((lanes.BULK,))).values())
        return runtime().feeder.feed(publish_parked, queued)
    except (redis.exceptions.RedisError, OperationalError) as exc:  # the next round tries again
        log.warning("bulk feeding failed", error=f"{type(exc).__name__}: {exc}")
        return 0


def queue_lengths(names: list[str]) -> dict[str, int]:
    """Messages waiting in each of the broker's queues ``names``."""
    with runtime().redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        return dict(zip(names, pipe.execute(), strict=True))
