"""The benchmark runner: ``python -m bench.run [--scenario NAME] [--scale F] [--runs N]``.

For each scenario (bench/scenarios.py) it starts prefsync's worker with its default
settings (``celery -A worker worker --concurrency=2``, what ``prefsync worker`` runs) and
then the NAIVE BASELINE worker (bench/naive.py), each against the same throwaway
redis-server and the same fast fake Braze/Brevo (bench/fake.py), and measures ``--runs``
runs of each in the same worker process:

* events/s: events that ended well (delivered, or skipped on purpose) over the time from
  the first enqueue to the last event's end, as seen in prefsync's outcome counters (the
  naive baseline: calls the fake accepted). The producer -- this process -- enqueues while
  the worker delivers, so the time includes enqueueing (shown apart as enqueue/s).
* latency p50/p99: the fake's receive time minus the enqueue time stamped in each event.
* destination calls, 429s, and for Brevo the accepted calls/s against the limit.
* Redis commands per event (producer and worker), from INFO commandstats.
* worker RSS: VmHWM (peak) of the main process and of each pool child, summed, and
  VmRSS summed, read after each run; growth over the runs shows a leak.

The fairness scenario (bench/fairness.py) runs prefsync alone, with tenants of its own: a
live tenant's latency while other tenants' bulk loads and a Brevo backlog drain, for one
worker and for Brevo's deliveries in a worker of their own.

The numbers are medians over the runs. The naive baseline runs ``--naive-scale`` of each
scenario's events (at least 2,000; its rate does not depend on the count). Results are
printed and written to bench/RESULTS.md under ``--label``. ``--profile [NAME ...]`` adds
one more, unmeasured, prefsync run of those scenarios under py-spy and writes where the
worker spends its time.

How long: each run takes events / events-per-second. Before batching (a few dozen to a
few hundred events/s here) a full-size run takes many hours, so use ``--scale``; at the
targets (20,000 events/s) a full run is dominated by the naive baseline and Brevo's
10 calls/s (2,000 events = 200 s a run).

Everything runs on this machine and shares its cores (2 on the project's machines):
producer, worker, Redis and fake compete for them, and so does anyone else's work, so
expect noise of 10-20% between runs.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench import fairness, profile, report
from bench.harness import Naive, Prefsync, Stack, System, measure
from bench.metrics import RunResult, Summary
from bench.scenarios import SCENARIOS, Scenario
from tests.processes import REPO_ROOT

RESULTS = REPO_ROOT / "bench" / "RESULTS.md"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="Throughput and latency benchmark of prefsync."
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--scale", type=float, default=1.0, help="shrink every scenario (0.01: 2,000 events)"
    )
    parser.add_argument("--runs", type=int, default=3, help="measured runs per system")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker node")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="worker nodes on the same Redis (celery worker -n bench-prefsync-1@host, -2@...)",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument(
        "--naive-scale",
        type=float,
        default=0.1,
        help="the naive baseline runs this fraction of a scenario's events, at least 2,000 "
        "(default 0.1: its rate is the same, and a full-size baseline takes over an hour)",
    )
    parser.add_argument(
        "--profile",
        nargs="*",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help="one more prefsync run under py-spy, for the scenarios named (none named: all)",
    )
    parser.add_argument("--label", default="latest", help="the RESULTS.md block to (re)write")
    parser.add_argument("--notes", default="", help="a paragraph for the RESULTS.md block")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write")
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument(
        "--redis-url", help="use this Redis (and the next database for the baseline)"
    )
    parser.add_argument("--brevo-limit", type=int, default=10, help="fake Brevo calls/window")
    parser.add_argument("--brevo-window", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=150.0,
        help="give a run up after this long without an event ending (Brevo retries wait up "
        "to 110 s between attempts)",
    )
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and profiles")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.runs < 1 or not 0 < args.naive_scale <= 1:
        parser.error("--scale must be > 0, --naive-scale in (0, 1] and --runs >= 1")
    if args.profile is not None and profile.available() is None:
        parser.error("--profile needs py-spy: .venv/bin/pip install py-spy")
    return args


def describe(result: RunResult) -> str:
    def ms(q: float) -> str:
        value = result.latency_ms(q)
        return "-" if value is None else f"{value:,.0f}"

    memory = result.memory
    drain = result.drain_rate
    rss = f", RSS {memory.current:.0f} MiB (peak {memory.peak_total:.0f})" if memory else ""
    return (
        f"{result.ok:,}/{result.events:,} ok, {result.failed} failed in {result.seconds:.1f} s "
        f"= {result.events_per_s:,.0f} events/s (enqueue {result.feed_rate:,.0f}/s, "
        f"after enqueue {'-' if drain is None else f'{drain:,.0f}'}/s), "
        f"p50 {ms(50)} ms, p99 {ms(99)} ms, {result.calls:,} calls, "
        f"{result.objects:,} users/contacts accepted, outcomes {result.outcomes}, "
        f"{result.rate_limited} x 429, {result.redis_per_event:.1f} Redis commands/event{rss}"
        f"{'' if result.complete else ', INCOMPLETE (stalled)'}"
    )


def run_system(
    stack: Stack, system: System, scenario: Scenario, args: argparse.Namespace, workdir: Path
) -> tuple[Summary, str | None]:
    runs = []
    for number in range(1, args.runs + 1):
        result = measure(stack, system, scenario, number, args.stall_timeout)
        print(f"  {system.name} run {number}: {describe(result)}", flush=True)
        runs.append(result)
    profiled = None
    wanted = args.profile is not None and (not args.profile or scenario.name in args.profile)
    if wanted and system.name == "prefsync":
        binary = profile.available()
        assert binary is not None
        output = workdir / f"profile-{scenario.name}.txt"
        recording: list[profile.Recording] = []

        def start() -> None:
            recording.append(profile.Recording(binary, system.workers[0].pid, output))
            time.sleep(0.5)  # py-spy attaches to the worker and its children

        try:
            result = measure(stack, system, scenario, 0, args.stall_timeout, on_start=start)
        finally:
            for r in recording:
                r.stop()
        print(f"  {system.name} profiled run: {describe(result)}", flush=True)
        if output.exists():
            profiled = profile.markdown(profile.summarize(output, system.workers[0].pid, result.ok))
            print(profiled, flush=True)
        else:
            print(f"  py-spy wrote nothing; see {output.with_suffix('.log')}", file=sys.stderr)
    return Summary(system.name, runs), profiled


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.scenario or list(SCENARIOS)
    scenarios = [SCENARIOS[name].scaled(args.scale) for name in names]
    workdir = Path(tempfile.mkdtemp(prefix="prefsync-bench-"))
    info = report.machine()
    sections: list[tuple[Scenario, list[Summary]]] = []
    profiles: dict[str, str] = {}
    extra: list[tuple[Scenario, str]] = []
    # Stop everything started also when killed, or interrupted from a background job (which
    # starts with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    systems: list[type[Prefsync] | type[Naive]] = [Prefsync] if args.no_naive else [Prefsync, Naive]
    started = time.monotonic()
    stack: Stack | None = None
    try:
        stack = Stack(workdir, args.redis_url, args.brevo_limit, args.brevo_window)
        print(f"redis {stack.redis_url}, fake {stack.fake_url}, work dir {workdir}", flush=True)
        for scenario in scenarios:
            print(f"\n{scenario.name}: {scenario.events:,} events", flush=True)
            if scenario.name == "fairness":  # tenants of its own, no naive baseline
                results = {
                    name: fairness.run(stack, scenario, workers, workdir / f"fairness-{n}.log")
                    for n, (name, workers) in enumerate(
                        fairness.deployments(args.concurrency).items()
                    )
                }
                shown = fairness.text(results)
                print(shown, flush=True)
                extra.append((scenario, shown))
                continue
            summaries = []
            for kind in systems:
                sized = scenario if kind is Prefsync else scenario.for_baseline(args.naive_scale)
                log = workdir / f"{scenario.name}-{kind.name}.log"
                system = kind(stack, sized, args.concurrency, log, args.nodes)
                try:
                    summary, profiled = run_system(stack, system, sized, args, workdir)
                finally:
                    system.stop()
                summaries.append(summary)
                if profiled:
                    profiles[scenario.name] = profiled
            sections.append((scenario, summaries))
            print(report.text(scenario, summaries, args.brevo_limit / args.brevo_window))
    finally:
        if stack is not None:
            stack.close()
        if args.keep_workdir:
            print(f"logs and profiles kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.monotonic() - started
    print(f"\nbenchmark took {elapsed / 60:.1f} min")
    if not args.no_write:
        settings = {
            "scale": f"{args.scale:g}",
            "runs": str(args.runs),
            "naive baseline size": f"{args.naive_scale:g} of the events, at least 2,000",
            "worker concurrency": str(args.concurrency),
            "worker nodes": str(args.nodes),
            "fake Brevo limit": f"{args.brevo_limit} calls per {args.brevo_window:g} s",
            "wall time": f"{elapsed / 60:.1f} min",
            "producer": _producer_name(),
        }
        new_block = report.block(
            args.label,
            info,
            settings,
            sections,
            args.brevo_limit / args.brevo_window,
            profiles,
            args.notes,
            extra,
        )
        report.update_results(args.results, args.label, new_block)
        print(f"wrote {args.results} ({args.label!r})")
    return 0


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _producer_name() -> str:
    from bench.feed import prefsync_sink

    return prefsync_sink().name


if __name__ == "__main__":
    sys.exit(main())
