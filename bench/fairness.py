"""The fairness scenario: live events are not kept behind a bulk load or a slow
destination, and a bulk load is shared with other tenants'
(worker.queue.lanes, worker.records.feeder).

One prefsync worker (default settings, ``--concurrency``) and four tenants:

* A (``bench-fair-a``, Braze): a bulk load of the scenario's events (200,000 at scale 1),
  ``enqueue_many(..., bulk=True)``;
* D (``bench-fair-d``, Braze): a bulk load a twentieth of A's, parked just after A's;
* C (``bench-fair-c``, Brevo, 10 calls/s): a live backlog of ``BREVO_BACKLOG`` events;
* B (``bench-fair-b``, Braze): live opt-outs at the scenario's rate (50/s), one
  ``enqueue_many`` call each, from once A's load is parked until it has ended.

Only B's Braze config maps the enqueue stamp, so the fake's Braze latencies are B's alone:
its p50/p99 enqueue->delivered is the figure (target: p99 under 2 s). A's and D's ends
show the sharing: D's load, parked after A's, should end long before A's.

Against a producer without bulk loads (before lanes: everything in one queue), the bulk
loads are plain ``enqueue_many`` calls; the same runner measures that "before".
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.events import NEWSLETTER_PROPERTY, EventFactory, braze_config, brevo_config
from bench.harness import Stack, worker_command
from bench.metrics import percentile
from bench.scenarios import Scenario
from tests.processes import start_worker

BREVO_BACKLOG = 300  # events: 30 s of Brevo calls at 10 calls/s
CHUNK = 500  # events a bulk enqueue_many call
POLL = 0.25  # seconds between looks at the tenants' progress
DRAIN_TIMEOUT = 300.0  # seconds to wait for the last events after B's feed


@dataclass
class Tenant:
    name: str
    events: int
    before: int = 0  # events of the tenant that had ended before this run
    started: float = 0.0  # when its first event was enqueued (epoch seconds)
    ended: float | None = None  # when its last event ended

    @property
    def seconds(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


@dataclass
class FairnessResult:
    a: Tenant
    d: Tenant
    b: Tenant
    c: Tenant
    b_latencies: list[float]
    brevo_calls: int
    brevo_429: int
    brevo_accepted_per_s: float | None
    bulk_api: bool

    def ms(self, q: float) -> str:
        value = percentile(self.b_latencies, q)
        return "-" if value is None else f"{value * 1000:,.0f}"


def bulk_sink() -> tuple[Callable[[list[dict[str, Any]]], object], bool]:
    """``enqueue_many`` as a bulk load, and whether the producer knows bulk loads."""
    from worker.producer import enqueue_many

    if "bulk" in inspect.signature(enqueue_many).parameters:
        return (lambda payloads: enqueue_many(payloads, bulk=True)), True
    return enqueue_many, False


def configure(stack: Stack) -> None:
    from worker.connectors.config import parse_config
    from worker.delivery.runtime import runtime
    from worker.infra.settings import get_settings

    unstamped = braze_config(stack.fake_url)
    unstamped["mappings"] = [{"id": "OPTED_IN", "value": NEWSLETTER_PROPERTY}]
    configs = {
        "bench-fair-a": unstamped,
        "bench-fair-d": unstamped,
        "bench-fair-b": braze_config(stack.fake_url),
        "bench-fair-c": brevo_config(),
    }
    for tenant, raw in configs.items():
        runtime().configs.put(tenant, parse_config(raw, allow_hosts=get_settings().allow_hosts))


def ended(tenant: str) -> int:
    from worker.delivery.runtime import runtime

    counts = runtime().recorder.counts(tenant)
    return sum(counts.get(k, 0) for k in ("delivered", "skipped", "dead_lettered"))


def deployments(concurrency: int) -> dict[str, list[tuple[list[str], dict[str, str]]]]:
    """How the workers run: name -> [(command, extra env)]. "one worker" is what
    ``make run`` starts; "paced apart" is the compose file's (docs/delivery.md, "Lanes"):
    Brevo's deliveries, which sleep for their slots, in a worker of their own. Against a
    worker without lanes, only the first."""
    one = [(worker_command("worker", "bench-fair", concurrency), {})]
    try:
        from worker.queue.lanes import queues
    except ImportError:
        return {"one worker": one}
    apart = [
        (
            [*worker_command("worker", f"bench-fair-{name}", workers), f"--queues={','.join(q)}"],
            {"PREFSYNC_HEARTBEAT_FILE": f"/tmp/prefsync-bench-fair-{name}.heartbeat"},
        )
        for name, workers, q in (
            ("main", concurrency, queues(without=("sendinblue",))),
            ("brevo", 2, queues(only=("sendinblue",))),
        )
    ]
    return {"one worker": one, "paced apart": apart}


def run(
    stack: Stack,
    scenario: Scenario,
    workers: list[tuple[list[str], dict[str, str]]],
    log: Path,
) -> FairnessResult:
    from worker.producer import enqueue_many

    configure(stack)
    run_id = f"f{time.time_ns()}"
    factories = {
        name: EventFactory(f"bench-fair-{name}", f"{run_id}{name}", None) for name in "abcd"
    }
    a = Tenant("bench-fair-a", scenario.events)
    d = Tenant("bench-fair-d", max(1, scenario.events // 20))
    c = Tenant("bench-fair-c", BREVO_BACKLOG)
    b = Tenant("bench-fair-b", 0)
    for tenant in (a, d, c, b):
        tenant.before = ended(tenant.name)
    stack.fake_reset()
    started = [
        start_worker(
            f"prefsync worker {n}", command, {**stack.env, **env}, log.with_suffix(f".{n}")
        )
        for n, (command, env) in enumerate(workers)
    ]
    try:
        bulk, bulk_api = bulk_sink()
        for tenant, factory in ((a, factories["a"]), (d, factories["d"])):
            tenant.started = time.time()
            for start in range(0, tenant.events, CHUNK):
                count = min(CHUNK, tenant.events - start)
                bulk([factory.make(i, tenant.started) for i in range(start, start + count)])
        c.started = time.time()
        enqueue_many([factories["c"].make(i, c.started) for i in range(c.events)])
        b.started = time.time()
        pending = [a, d, c]
        while a.ended is None:  # B's live opt-outs at the rate, while A's load drains
            for worker in started:
                worker.check_running()
            due = b.started + b.events / scenario.rate
            if time.time() >= due:
                enqueue_many([factories["b"].make(b.events, time.time())])
                b.events += 1
            pending = _note_ends(pending)
            time.sleep(min(max(due - time.time(), 0.0), 0.02))
        pending.append(b)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while pending and time.monotonic() < deadline:
            for worker in started:
                worker.check_running()
            pending = _note_ends(pending)
            time.sleep(POLL)
    finally:
        for worker in started:
            worker.stop()
    stats = stack.fake_stats(samples=True)
    brevo = stats["brevo"]
    span = (brevo["last_accepted_at"] or c.started) - c.started
    return FairnessResult(
        a=a,
        d=d,
        b=b,
        c=c,
        b_latencies=stats["braze"]["latencies"],
        brevo_calls=brevo["calls"],
        brevo_429=brevo["rate_limited"],
        brevo_accepted_per_s=brevo["accepted_calls"] / span if span > 0 else None,
        bulk_api=bulk_api,
    )


_last_look = [0.0]


def _note_ends(pending: list[Tenant]) -> list[Tenant]:
    """The tenants still pending, once each has been looked at (every POLL seconds)."""
    now = time.monotonic()
    if now - _last_look[0] < POLL:
        return pending
    _last_look[0] = now
    left = []
    for tenant in pending:
        if ended(tenant.name) - tenant.before >= tenant.events:
            tenant.ended = time.time()
        else:
            left.append(tenant)
    return left


def text(results: dict[str, FairnessResult]) -> str:
    def seconds(tenant: Tenant) -> str:
        return "did not end" if tenant.seconds is None else f"{tenant.seconds:.1f} s"

    def rate(result: FairnessResult) -> str:
        accepted = result.brevo_accepted_per_s
        return "-" if accepted is None else f"{accepted:.1f}"

    first = next(iter(results.values()))
    lines = [
        f"A's bulk load: {first.a.events:,} events to Braze; D's: {first.d.events:,}, parked "
        f"just after A's; C's live Brevo backlog: {first.c.events:,} events; B: live Braze "
        "opt-outs at 50/s, one enqueue each, while A's load drains.",
        "",
        "| workers | B's events | B p50 ms | B p99 ms | A's load ended in | D's load ended in "
        "| C's backlog ended in | Brevo calls/s (429s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r.b.events:,} | {r.ms(50)} | {r.ms(99)} | {seconds(r.a)} "
            f"| {seconds(r.d)} | {seconds(r.c)} | {rate(r)} ({r.brevo_429}) |"
        )
    if not first.bulk_api:
        lines.append("")
        lines.append("The producer has no bulk loads (before lanes): A's and D's loads were "
                     "plain `enqueue_many` calls, into the one queue.")  # fmt: skip
    return "\n".join(lines)
