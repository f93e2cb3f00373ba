"""The producer side: hand a run's events to a queue, stamped with their enqueue time,
as fast as it goes or at a steady rate.

A ``Sink`` takes a list of payloads. prefsync's sink is ``worker.producer.enqueue_many``
when that exists (one call per chunk, every event of the chunk stamped just before it),
else ``worker.producer.enqueue`` once per event (each stamped just before its own call).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.events import EventFactory

CHUNK = 500  # events per enqueue_many call
TICK = 0.02  # seconds between hand-overs at a steady rate, at most


@dataclass(frozen=True)
class Sink:
    name: str
    submit: Callable[[list[dict[str, Any]]], object]
    chunk: int  # events stamped and handed over at once


def prefsync_sink() -> Sink:
    from worker import producer

    enqueue_many = getattr(producer, "enqueue_many", None)
    if enqueue_many is not None:
        return Sink("worker.producer.enqueue_many", enqueue_many, CHUNK)

    def one_by_one(payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            producer.enqueue(payload)

    return Sink("worker.producer.enqueue (one call per event)", one_by_one, 1)


@dataclass(frozen=True)
class Fed:
    first_stamp: float
    seconds: float  # from the first stamp to the last event handed over

    def rate(self, events: int) -> float:
        return events / self.seconds if self.seconds > 0 else float("inf")


def feed(sink: Sink, factory: EventFactory, events: int, rate: float | None = None) -> Fed:
    """Hand ``events`` events to ``sink``: as fast as it takes them, or ``rate`` per second
    (a chunk is sent when its last event is due; a late producer catches up at once)."""
    # At a steady rate, hand over at least every TICK seconds: a chunk a second would be
    # bursts, not a steady rate.
    chunk = sink.chunk if rate is None else max(1, min(sink.chunk, int(rate * TICK)))
    first = time.time()
    sent = 0
    while sent < events:
        count = min(chunk, events - sent)
        if rate is not None:
            due = first + (sent + count - 1) / rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
        stamp = time.time()
        sink.submit([factory.make(i, stamp) for i in range(sent, sent + count)])
        sent += count
    return Fed(first, time.time() - first)
