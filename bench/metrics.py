"""What one run measured, and how runs are summed up into a scenario's numbers."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.procs import Memory


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``samples``; None when there are none."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


@dataclass
class RunResult:
    system: str  # "prefsync" or "naive"
    run: int
    events: int
    complete: bool  # every event ended before the stall timeout
    ok: int  # events delivered or skipped on purpose (naive: users the fake accepted)
    failed: int  # prefsync: dead-lettered; naive: events the fake refused (429...)
    outcomes: dict[str, int]  # prefsync's counters for the run (naive: the fake's statuses)
    feed_seconds: float  # handing the events to the queue
    seconds: float  # first enqueue -> last event ended
    drained: int = 0  # events that ended after the producer was done
    drain_seconds: float = 0.0  # producer done -> last event ended
    latencies: list[float] = field(repr=False, default_factory=list)  # seconds
    calls: int = 0  # destination calls (any answer)
    accepted_calls: int = 0
    rate_limited: int = 0  # 429s
    objects: int = 0  # users/contacts the destination accepted
    users: int = 0  # distinct users among them
    peak_calls_per_window: int = 0
    accepted_calls_per_s: float | None = None  # first enqueue -> last accepted call
    memory: Memory | None = None
    redis_calls: dict[str, int] = field(default_factory=dict)  # producer + worker, by command
    redis_usec: int = 0  # Redis CPU for them
    #: CPU seconds of each part of the tree during the run: worker (all nodes, pools
    #: included), redis (when the runner started it), fake, producer (the runner)
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    def cpu_us_per_event(self, part: str | None = None) -> float | None:
        """CPU µs per event of one part of the tree, or of all of it (None: not read)."""
        if not self.events or not self.cpu_seconds or (part and part not in self.cpu_seconds):
            return None
        used = self.cpu_seconds[part] if part else sum(self.cpu_seconds.values())
        return used / self.events * 1e6

    @property
    def redis_per_event(self) -> float:
        return sum(self.redis_calls.values()) / self.events if self.events else 0.0

    @property
    def events_per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def drain_rate(self) -> float | None:
        """Events/s once the producer was done: the worker alone, not sharing the cores
        with the producer (None when too little was left to tell)."""
        if self.drained < max(50, self.events // 20) or self.drain_seconds <= 0:
            return None
        return self.drained / self.drain_seconds

    @property
    def feed_rate(self) -> float:
        return self.events / self.feed_seconds if self.feed_seconds > 0 else float("inf")

    def latency_ms(self, q: float) -> float | None:
        value = percentile(self.latencies, q)
        return None if value is None else value * 1000


@dataclass
class Summary:
    """A scenario's numbers for one system: medians over its runs."""

    system: str
    runs: list[RunResult]

    @property
    def events(self) -> int:
        return self.runs[0].events if self.runs else 0

    @property
    def complete(self) -> bool:
        return all(r.complete for r in self.runs)

    @property
    def events_per_s(self) -> float | None:
        return median([r.events_per_s for r in self.runs])

    def latency_ms(self, q: float) -> float | None:
        return median([r.latency_ms(q) for r in self.runs])

    @property
    def calls(self) -> float | None:
        return median([r.calls for r in self.runs])

    @property
    def redis_per_event(self) -> float | None:
        return median([r.redis_per_event for r in self.runs])

    def cpu_us_per_event(self, part: str | None = None) -> float | None:
        return median([r.cpu_us_per_event(part) for r in self.runs])

    @property
    def rate_limited(self) -> int:
        return sum(r.rate_limited for r in self.runs)

    @property
    def accepted_calls_per_s(self) -> float | None:
        return median([r.accepted_calls_per_s for r in self.runs])

    @property
    def drain_rate(self) -> float | None:
        return median([r.drain_rate for r in self.runs])

    @property
    def feed_rate(self) -> float | None:
        return median([r.feed_rate for r in self.runs])

    @property
    def peak_rss(self) -> float | None:
        peaks = [r.memory.peak_total for r in self.runs if r.memory]
        return max(peaks) if peaks else None

    @property
    def rss_after_runs(self) -> list[float]:
        return [r.memory.current for r in self.runs if r.memory]

    @property
    def rss_growth(self) -> float | None:
        """Resident memory after the last run over that after the first, minus 1."""
        after = self.rss_after_runs
        return after[-1] / after[0] - 1 if len(after) > 1 and after[0] else None
