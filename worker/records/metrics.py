"""The figures operators watch, kept in Redis so that every worker process on every node
adds to the same ones; read back for ``/metrics`` (worker.ingress.metrics) and
``prefsync stats``.

Counters are written in the transactions that record what they count (worker.records.recorder,
worker.records.outbox). Backlog figures are not written at all: they are read from the queue, the
outbox and the dead-letter store when asked. No label carries a user or a tenant: tenants
can be thousands, and each label value is a time series to keep.

Redis keys (hashes):
    prefsync:metrics:outcomes   "type|outcome|reason" -> count (reason: skipped only)
    prefsync:metrics:answers    "type|2xx" ... "type|5xx", "type|none" (no answer), "type|429"
    prefsync:metrics:retries    "scheduled" -> count
    prefsync:metrics:latency    "type|<bucket index>" -> count, "type|sum", "type|count"
    prefsync:metrics:tenants    "tenant|type|outcome|reason" -> count, with
                                PREFSYNC_METRICS_TENANT_LABEL only
    prefsync:metrics:reconcile  JSON [tenant, connector id] -> the connector's last
                                ``prefsync reconcile`` and its totals (``Reconciles``), JSON
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import redis
from redis.client import Pipeline

from worker.core.outcomes import Outcome, OutcomeKind
from worker.records import deadletter, outbox

OUTCOMES = "prefsync:metrics:outcomes"
ANSWERS = "prefsync:metrics:answers"
RETRIES = "prefsync:metrics:retries"
LATENCY = "prefsync:metrics:latency"
TENANTS = "prefsync:metrics:tenants"
RECONCILE = "prefsync:metrics:reconcile"

#: Upper bounds (seconds) of the enqueue->delivered latency buckets: from a quick delivery
#: to one that waited out the whole retry schedule or a backlog.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_OVERFLOW = len(LATENCY_BUCKETS)  # the +Inf bucket's index

#: The connector type of an event refused before it reached a connector.
UNROUTED = "unrouted"


def status_class(status: int | None) -> str:
    return "none" if status is None else f"{status // 100}xx"


def count_outcomes(
    pipe: Pipeline,
    connector_type: str,
    outcomes: Iterable[Outcome],
    now: float,
    enqueued_at: float | None,
    tenant: str | None = None,
) -> None:
    """Count each outcome, and the latency of each delivery when the message said when its
    events were enqueued; by ``tenant`` too when one is given."""
    kind = connector_type or UNROUTED
    counts = Counter(
        f"{kind}|{o.kind}|{o.reason if o.kind is OutcomeKind.SKIPPED else ''}" for o in outcomes
    )
    for field, count in counts.items():
        pipe.hincrby(OUTCOMES, field, count)
        if tenant is not None:
            pipe.hincrby(TENANTS, f"{tenant}|{field}", count)
    delivered = counts.get(f"{kind}|{OutcomeKind.DELIVERED}|", 0)
    if delivered and enqueued_at is not None:
        latency = max(0.0, now - enqueued_at)
        bucket = next((i for i, le in enumerate(LATENCY_BUCKETS) if latency <= le), _OVERFLOW)
        pipe.hincrby(LATENCY, f"{kind}|{bucket}", delivered)
        pipe.hincrbyfloat(LATENCY, f"{kind}|sum", latency * delivered)
        pipe.hincrby(LATENCY, f"{kind}|count", delivered)


def count_answers(pipe: Pipeline, connector_type: str, statuses: Counter[int | None]) -> None:
    """Count the destination's answers (HTTP statuses; None for no answer)."""
    for status, count in statuses.items():
        pipe.hincrby(ANSWERS, f"{connector_type}|{status_class(status)}", count)
        if status == 429:
            pipe.hincrby(ANSWERS, f"{connector_type}|429", count)


def count_retry(pipe: Pipeline) -> None:
    pipe.hincrby(RETRIES, "scheduled", 1)


@dataclass(frozen=True)
class Counters:
    outcomes: dict[tuple[str, str, str], int]  # (type, outcome, reason) -> count
    answers: dict[tuple[str, str], int]  # (type, status class) -> count
    rate_limited: dict[str, int]  # type -> 429s
    retries_scheduled: int
    #: type -> (count per bucket, LATENCY_BUCKETS then +Inf, not cumulative; sum; count)
    latency: dict[str, tuple[list[int], float, int]]


@dataclass(frozen=True)
class Backlog:
    queue_depths: dict[str, int]  # queue -> messages waiting in it
    retries_waiting: int  # tasks waiting for a retry countdown or a deferral
    outbox: int  # tasks published and not ended (queued, running or waiting)
    dead_letters: int
    oldest_waiting: float  # seconds the oldest unfinished task has been due; 0 for none
    dead_letter_bytes: int = 0  # what the dead letters take in Redis, all tenants

    @property
    def queue_depth(self) -> int:
        """Messages waiting in the broker's queues, all lanes."""
        return sum(self.queue_depths.values())


def read_counters(client: redis.Redis) -> Counters:
    with client.pipeline(transaction=False) as pipe:
        for name in (OUTCOMES, ANSWERS, RETRIES, LATENCY):
            pipe.hgetall(name)
        outcomes_raw, answers_raw, retries_raw, latency_raw = pipe.execute()
    outcomes = {}
    for field, value in _decoded(outcomes_raw):
        kind, outcome, reason = field.split("|", 2)
        outcomes[(kind, outcome, reason)] = int(value)
    answers, rate_limited = {}, {}
    for field, value in _decoded(answers_raw):
        kind, what = field.rsplit("|", 1)
        if what == "429":
            rate_limited[kind] = int(value)
        else:
            answers[(kind, what)] = int(value)
    latency: dict[str, tuple[list[int], float, int]] = {}
    for field, value in _decoded(latency_raw):
        kind, what = field.rsplit("|", 1)
        buckets, total, count = latency.get(kind, ([0] * (_OVERFLOW + 1), 0.0, 0))
        if what == "sum":
            total = float(value)
        elif what == "count":
            count = int(value)
        else:
            buckets[int(what)] = int(value)
        latency[kind] = (buckets, total, count)
    retries = int(dict(_decoded(retries_raw)).get("scheduled", 0))
    return Counters(outcomes, answers, rate_limited, retries, latency)


def read_tenant_outcomes(client: redis.Redis) -> dict[tuple[str, str, str, str], int]:
    """(tenant, type, outcome, reason) -> count, as PREFSYNC_METRICS_TENANT_LABEL records."""
    counts = {}
    for field, value in _decoded(client.hgetall(TENANTS)):
        tenant, kind, outcome, reason = field.rsplit("|", 3)  # a tenant id may hold a "|"
        counts[(tenant, kind, outcome, reason)] = int(value)
    return counts


def read_backlog(
    client: redis.Redis, queues: str | Sequence[str], grace: float, now: float
) -> Backlog:
    """``queues``: the broker's queue names (each lane has its own, worker.queue.lanes),
    counted each; ``grace``: the outbox's (the visibility timeout), which every due
    time in the outbox includes."""
    names = [queues] if isinstance(queues, str) else list(queues)
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.llen(name)
        pipe.zcount(outbox.DUE, f"({now + grace}", "+inf")
        pipe.zcard(outbox.DUE)
        pipe.zcard(deadletter.ORDER)
        pipe.zrange(outbox.DUE, 0, 0, withscores=True)
        pipe.hvals(deadletter.SIZES)
        *depths, waiting, entries, dead, first, sizes = pipe.execute()
    oldest = max(0.0, now - (first[0][1] - grace)) if first else 0.0
    return Backlog(
        dict(zip(names, depths, strict=True)),
        waiting,
        entries,
        dead,
        oldest,
        sum(int(s) for s in sizes),
    )


@dataclass(frozen=True)
class Reconciles:
    """A connector's last ``prefsync reconcile`` (when, its result, people checked,
    drifted, fixed) and the people checked, drifted and fixed by every run so far."""

    connector_type: str
    at: float
    result: str  # "agrees", "drift" or "unreadable"
    checked: int
    drifted: int
    fixed: int
    checked_total: int = 0
    drifted_total: int = 0
    fixed_total: int = 0


def record_reconcile(client: redis.Redis, tenant: str, connector_id: str, run: Reconciles) -> None:
    """Keep ``run`` as the connector's last reconcile, its figures added to the totals.
    The reconcile command is the only writer, one run a connector at a time."""
    field = json.dumps([tenant, connector_id])
    raw = client.hget(RECONCILE, field)
    before = json.loads(raw) if raw else {}
    totals = {
        f"{name}_total": int(before.get(f"{name}_total", 0)) + getattr(run, name)
        for name in ("checked", "drifted", "fixed")
    }
    client.hset(RECONCILE, field, json.dumps(asdict(run) | totals))


def read_reconciles(client: redis.Redis) -> dict[tuple[str, str], Reconciles]:
    """(tenant, connector id) -> its last reconcile and totals."""
    return {
        tuple(json.loads(field)): Reconciles(**json.loads(value))
        for field, value in _decoded(client.hgetall(RECONCILE))
    }


def _decoded(raw: dict[bytes, bytes]) -> list[tuple[str, str]]:
    return [(k.decode(), v.decode()) for k, v in raw.items()]
