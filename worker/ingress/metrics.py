"""``/metrics``: what every worker recorded in Redis (worker.records.metrics), the backlog read from
Redis at each scrape, and this ingress process's own requests — in Prometheus's text format,
written by prometheus_client.

Every ingress process answers the same worker figures (they come from Redis), so a
Prometheus scraping several of them sees the same series from each: aggregate with max(),
not sum(), or scrape one. The ``prefsync_ingress_*`` series are each process's own.
"""

from __future__ import annotations

from collections.abc import Iterator

import redis
import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    Sample,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from worker.connectors import CONNECTORS
from worker.core.outcomes import OutcomeKind
from worker.core.retries import clock
from worker.delivery.runtime import runtime
from worker.infra.settings import Settings
from worker.queue import lanes
from worker.records import metrics

log = structlog.get_logger("prefsync.ingress")

# A "_created" timestamp beside every counter doubles the series and tells nothing here.
disable_created_metrics()

OUTCOME_LABELS = ["connector_type", "outcome", "reason"]


class WorkerFigures(Collector):
    """Reads the workers' figures from Redis when scraped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        client = runtime().redis
        try:
            counters = metrics.read_counters(client)
            backlog = metrics.read_backlog(
                client, lanes.queues(), self.settings.visibility_timeout, clock()
            )
        except redis.exceptions.RedisError as exc:
            # The ingress's own series still answer; this one says why the rest are missing.
            log.warning("worker figures not read: Redis does not answer", error=str(exc))
            yield GaugeMetricFamily(
                "prefsync_redis_up", "1 when Redis answered this scrape, else 0.", value=0
            )
            return
        yield GaugeMetricFamily(
            "prefsync_redis_up", "1 when Redis answered this scrape, else 0.", value=1
        )
        # Every connector type's main series exist from the start, at 0: a rate() or an
        # alert on them works before the first delivery, 429 or dead letter.
        for kind in CONNECTORS:
            for outcome in (OutcomeKind.DELIVERED, OutcomeKind.DEAD_LETTERED):
                counters.outcomes.setdefault((kind, str(outcome), ""), 0)
            counters.answers.setdefault((kind, "2xx"), 0)
            counters.rate_limited.setdefault(kind, 0)
            counters.latency.setdefault(kind, ([0] * (len(metrics.LATENCY_BUCKETS) + 1), 0.0, 0))
        outcomes = CounterMetricFamily(
            "prefsync_outcomes",
            "How (event, connector) pairs ended: delivered, skipped (with the reason), "
            "dead_lettered.",
            labels=OUTCOME_LABELS,
        )
        for (kind, outcome, reason), value in sorted(counters.outcomes.items()):
            _add_without_empty_labels(outcomes, OUTCOME_LABELS, [kind, outcome, reason], value)
        yield outcomes
        yield CounterMetricFamily(
            "prefsync_retries_scheduled",
            "Retries scheduled after a transient failure.",
            value=counters.retries_scheduled,
        )
        answers = CounterMetricFamily(
            "prefsync_destination_answers",
            "Answers of Braze and Brevo by HTTP status class ('none': no answer).",
            labels=["connector_type", "status_class"],
        )
        for (kind, status_class), value in sorted(counters.answers.items()):
            answers.add_metric([kind, status_class], value)
        yield answers
        limited = CounterMetricFamily(
            "prefsync_destination_rate_limited",
            "429 answers of the destinations (also counted in the 4xx class).",
            labels=["connector_type"],
        )
        for kind, value in sorted(counters.rate_limited.items()):
            limited.add_metric([kind], value)
        yield limited
        latency = HistogramMetricFamily(
            "prefsync_delivery_latency_seconds",
            "From enqueue to delivered, per delivered (event, connector) pair.",
            labels=["connector_type"],
        )
        bounds = [*(f"{b:g}" for b in metrics.LATENCY_BUCKETS), "+Inf"]
        for kind, (buckets, total, _) in sorted(counters.latency.items()):
            cumulative, running = [], 0
            for bound, count in zip(bounds, buckets, strict=True):
                running += count
                cumulative.append((bound, running))
            latency.add_metric([kind], cumulative, total)
        yield latency
        depth = GaugeMetricFamily(
            "prefsync_queue_depth", "Messages waiting in a queue of the broker.", labels=["queue"]
        )
        for queue, value in backlog.queue_depths.items():
            depth.add_metric([queue], value)
        yield depth
        gauges = {
            "prefsync_retries_waiting": (
                "Tasks waiting for a retry countdown or a deferral.",
                backlog.retries_waiting,
            ),
            "prefsync_outbox_entries": (
                "Tasks published and not ended (queued, running or waiting).",
                backlog.outbox,
            ),
            "prefsync_dead_letters": ("Dead letters kept now.", backlog.dead_letters),
            "prefsync_dead_letter_bytes": (
                "What the dead letters kept now take in Redis (bytes as stored).",
                backlog.dead_letter_bytes,
            ),
            "prefsync_oldest_waiting_seconds": (
                "How long the oldest unfinished task has been due to run.",
                backlog.oldest_waiting,
            ),
        }
        for name, (documentation, value) in gauges.items():
            yield GaugeMetricFamily(name, documentation, value=value)
        yield from _reconciles(metrics.read_reconciles(client))
        if self.settings.metrics_tenant_label:
            by_tenant = CounterMetricFamily(
                "prefsync_tenant_outcomes",
                "prefsync_outcomes by tenant too (PREFSYNC_METRICS_TENANT_LABEL).",
                labels=["tenant", *OUTCOME_LABELS],
            )
            for labels, value in sorted(metrics.read_tenant_outcomes(client).items()):
                _add_without_empty_labels(
                    by_tenant, ["tenant", *OUTCOME_LABELS], list(labels), value
                )
            yield by_tenant


def _reconciles(runs: dict[tuple[str, str], metrics.Reconciles]) -> Iterator[Metric]:
    """``prefsync reconcile``'s figures by connector type (no tenant, no connector id:
    each would be a series of its own): the last run of each connector, summed."""
    kinds = sorted(set(CONNECTORS) | {run.connector_type for run in runs.values()})
    drift = GaugeMetricFamily(
        "prefsync_reconcile_drift",
        "People found drifted by the last reconcile of each connector of the type.",
        labels=["connector_type"],
    )
    last = GaugeMetricFamily(
        "prefsync_reconcile_last_run_timestamp_seconds",
        "When a connector of the type was last reconciled (0: never).",
        labels=["connector_type"],
    )
    people = CounterMetricFamily(
        "prefsync_reconcile_people",
        "People checked, drifted and fixed by every reconcile so far.",
        labels=["connector_type", "what"],
    )
    for kind in kinds:
        of_kind = [run for run in runs.values() if run.connector_type == kind]
        drift.add_metric([kind], sum(run.drifted for run in of_kind))
        last.add_metric([kind], max((run.at for run in of_kind), default=0.0))
        for what in ("checked", "drifted", "fixed"):
            people.add_metric([kind, what], sum(getattr(run, f"{what}_total") for run in of_kind))
    yield from (drift, last, people)


def _add_without_empty_labels(
    family: CounterMetricFamily, names: list[str], values: list[str], value: float
) -> None:
    """A sample of the counter ``family`` without the labels it has no value for (a delivery
    has no ``reason``): ``reason=""`` would be a label with nothing to tell."""
    labels = {name: v for name, v in zip(names, values, strict=True) if v}
    family.samples.append(Sample(f"{family.name}_total", labels, value))


class IngressMetrics:
    """This process's registry: its own request counters and the workers' figures."""

    def __init__(self, settings: Settings) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "prefsync_ingress_requests",
            "Requests to /webhooks by answer status (this ingress process).",
            ["status"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "prefsync_ingress_events_accepted",
            "Events accepted (202) by this ingress process.",
            registry=self.registry,
        )
        self.tokens = Counter(
            "prefsync_ingress_token_requests",
            "Requests to /oauth/token by answer status (this ingress process).",
            ["status"],
            registry=self.registry,
        )
        self.signal_requests = Counter(
            "prefsync_ingress_signal_requests",
            "Requests to /signals/{connector_id} by answer status (this ingress process).",
            ["status"],
            registry=self.registry,
        )
        self.signals = Counter(
            "prefsync_ingress_signals",
            "Signals in 202-answered bodies: stored, duplicate (seen before) or ignored "
            "(nothing to write back: an opt-in, a bounce) (this ingress process).",
            ["outcome"],
            registry=self.registry,
        )
        self.registry.register(WorkerFigures(settings))

    def signal(self, status: int, stored: int = 0, duplicates: int = 0, ignored: int = 0) -> None:
        self.signal_requests.labels(str(status)).inc()
        for outcome, count in (("stored", stored), ("duplicate", duplicates), ("ignored", ignored)):
            if count:
                self.signals.labels(outcome).inc(count)

    def webhook(self, status: int, events: int) -> None:
        self.requests.labels(str(status)).inc()
        if events:
            self.accepted.inc(events)

    def token(self, status: int) -> None:
        self.tokens.labels(str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
