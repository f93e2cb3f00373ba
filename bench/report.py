"""Turning results into the text the runner prints and the block it writes to RESULTS.md.

RESULTS.md holds one block per label (``--label``, default "latest") between
``<!-- bench:begin LABEL -->`` and ``<!-- bench:end LABEL -->``; a run replaces its own
label's block and leaves the rest of the file -- other labels, hand-written notes -- alone,
so "before batching" stays next to later results.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from bench.metrics import Summary
from bench.scenarios import Scenario

TARGETS = {
    "braze": "target: >= 20,000 events/s end to end (~50x naive)",
    "braze-coalesce": "target: as braze; coalescing should cut the calls made",
    "brevo": "target: 0 x 429 and >= 90% of the configured rate",
    "brevo-batch": "target: >= 500 contacts/s (50x one contact per call), 0 x 429",
    "brevo-batch-unknown": "target: the known contacts delivered, the unknown skipped",
    "steady": "target: p99 < 1 s",
}

HEADER = """# prefsync benchmark results

Written by `make bench` (`python -m bench.run`, see bench/run.py for what it measures and
how). Each block below is one labelled run of the runner; a new run replaces only the block
of its own label. Text outside the blocks is kept.
"""


def machine() -> dict[str, str]:
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "cpu": model or platform.processor() or "unknown",
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "redis": _redis_version(),
        "commit": _commit(),
    }


def _redis_version() -> str:
    words = _output([shutil.which("redis-server") or "redis-server", "--version"]).split()
    version = next((w[2:] for w in words if w.startswith("v=")), "unknown")
    return f"Redis {version}"


def _commit() -> str:
    """The commit measured, and whether worker/ differs from it (someone's edits)."""
    commit = _output(["git", "-C", str(Path(__file__).parent), "rev-parse", "--short", "HEAD"])
    if not commit:
        return "unknown (not a git checkout)"
    changed = _output(
        ["git", "-C", str(Path(__file__).parent), "status", "--porcelain", "--", "../worker"]
    )
    return f"{commit} with uncommitted changes in worker/" if changed else commit


def _output(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(ours: float | None, naive: float | None) -> str:
    if not ours or not naive:
        return "-"
    return f"{ours / naive:.2f}x"


def _rss(summary: Summary) -> str:
    after = ", ".join(_num(x, 0) for x in summary.rss_after_runs)
    growth = summary.rss_growth
    trend = "" if growth is None else f" ({growth:+.0%})"
    return f"{after}{trend}"


def _cpu(measured: Summary) -> str:
    """Median CPU µs per event of the whole tree, then of each part: "410 (worker 300,
    redis 60, fake 20, producer 30)"."""
    total = measured.cpu_us_per_event()
    if total is None:
        return "-"
    parts = [
        f"{part} {_num(measured.cpu_us_per_event(part))}"
        for part in ("worker", "redis", "fake", "producer")
        if measured.cpu_us_per_event(part) is not None
    ]
    return f"{_num(total)} ({', '.join(parts)})"


def scenario_table(scenario: Scenario, summaries: list[Summary]) -> str:
    """A markdown table, one row per system (readable as plain text too)."""
    lines = [
        "| system | events | events/s (median) | after enqueue events/s | p50 ms | p99 ms "
        "| destination calls | 429s "
        "| accepted calls/s | enqueue/s | Redis cmds/event | CPU µs/event (tree) "
        "| peak RSS MiB | RSS after each run MiB | complete |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.system} | {s.events:,} | {_num(s.events_per_s)} | {_num(s.drain_rate)} "
            f"| {_num(s.latency_ms(50))} "
            f"| {_num(s.latency_ms(99))} | {_num(s.calls)} | {s.rate_limited} "
            f"| {_num(s.accepted_calls_per_s, 1)} | {_num(s.feed_rate)} "
            f"| {_num(s.redis_per_event, 1)} | {_cpu(s)} "
            f"| {_num(s.peak_rss)} | {_rss(s)} "
            f"| {'yes' if s.complete else 'NO'} |"
        )
    return "\n".join(lines)


def runs_table(summaries: list[Summary]) -> str:
    lines = [
        "| system | run | events | ok | failed | seconds | events/s | after enqueue "
        "| p50 ms | p99 ms "
        "| max ms | calls | objects | users | outcomes | Redis commands per event "
        "| Redis CPU µs/event |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        for r in s.runs:
            outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.outcomes.items()))
            commands = sorted(r.redis_calls.items(), key=lambda kv: -kv[1])[:6]
            per_event = ", ".join(f"{k} {v / r.events:.1f}" for k, v in commands)
            lines.append(
                f"| {s.system} | {r.run} | {r.events} | {r.ok} | {r.failed} "
                f"| {r.seconds:.2f} | {_num(r.events_per_s)} | {_num(r.drain_rate)} "
                f"| {_num(r.latency_ms(50))} "
                f"| {_num(r.latency_ms(99))} | {_num(r.latency_ms(100))} | {r.calls} "
                f"| {r.objects} | {r.users} | {outcomes} "
                f"| {r.redis_per_event:.1f} ({per_event}) | {r.redis_usec / r.events:.0f} |"
            )
    return "\n".join(lines)


def verdict(scenario: Scenario, summaries: list[Summary], brevo_limit: float) -> str:
    ours = next((s for s in summaries if s.system == "prefsync"), None)
    naive = next((s for s in summaries if s.system == "naive"), None)
    parts = [TARGETS.get(scenario.name, "")]
    for s in summaries:
        offered = s.feed_rate
        if scenario.rate and offered is not None and offered < 0.95 * scenario.rate:
            parts.append(
                f"{s.system}: the producer offered only {offered:,.0f} of the "
                f"{scenario.rate:g} events/s (enqueueing is too slow here)"
            )
    if ours is not None:
        theirs = naive.events_per_s if naive else None
        parts.append(f"prefsync/naive events/s: {_ratio(ours.events_per_s, theirs)}")
        if scenario.service == "brevo":
            achieved = ours.accepted_calls_per_s
            share = f"{achieved / brevo_limit:.0%}" if achieved else "-"
            parts.append(
                f"prefsync: {_num(achieved, 1)} accepted calls/s = {share} of the "
                f"{brevo_limit:g}/s limit, {ours.rate_limited} x 429 over {len(ours.runs)} runs"
            )
        if scenario.service == "braze":
            peak = max(r.peak_calls_per_window for r in ours.runs)
            parts.append(f"peak {peak:,} Braze calls in a 3 s window (a workspace allows 3,000)")
        if ours.rss_growth is not None:
            parts.append(f"worker RSS after run {len(ours.runs)} vs run 1: {ours.rss_growth:+.1%}")
    return "; ".join(p for p in parts if p)


def text(scenario: Scenario, summaries: list[Summary], brevo_limit: float) -> str:
    title = f"== {scenario.name}: {scenario.summary} -- {scenario.events:,} events"
    if scenario.rate:
        title += f" at {scenario.rate:g}/s for {scenario.seconds:g} s"
    table = scenario_table(scenario, summaries)
    return "\n".join([title, table, verdict(scenario, summaries, brevo_limit)])


def block(
    label: str,
    info: dict[str, str],
    settings: dict[str, str],
    sections: list[tuple[Scenario, list[Summary]]],
    brevo_limit: float,
    profiles: dict[str, str],
    notes: str = "",
    extra: list[tuple[Scenario, str]] = (),
) -> str:
    out = [
        f"<!-- bench:begin {label} -->",
        f"## {label} ({info['date']})",
        "",
        f"Machine: {info['cores']} cores ({info['cpu']}), {info['ram']} RAM, load average at "
        f"start {info['load']}; Python {info['python']}; {info['redis']}; commit "
        f"{info['commit']}.",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()) + ".",
    ]
    if notes:
        out += ["", notes]
    for scenario, summaries in sections:
        out += [
            "",
            f"### {scenario.name}: {scenario.summary}",
            "",
            f"Run here with {scenario.events:,} events"
            + (f" ({scenario.users:,} users)" if scenario.users else "")
            + (f" at {scenario.rate:g}/s for {scenario.seconds:g} s" if scenario.rate else "")
            + ".",
            "",
            scenario_table(scenario, summaries),
            "",
            verdict(scenario, summaries, brevo_limit),
            "",
            "<details><summary>each run</summary>",
            "",
            runs_table(summaries),
            "",
            "</details>",
        ]
        if scenario.name in profiles:
            out += ["", f"#### Where the worker spends its time ({scenario.name})", "",
                    profiles[scenario.name]]  # fmt: skip
    for scenario, shown in extra:  # scenarios with a table of their own (fairness)
        out += ["", f"### {scenario.name}: {scenario.summary}", "", shown]
    out.append(f"<!-- bench:end {label} -->")
    return "\n".join(out) + "\n"


def update_results(path: Path, label: str, new_block: str) -> None:
    """Replace ``label``'s block in ``path`` (or append it), keeping everything else."""
    current = path.read_text() if path.exists() else HEADER
    pattern = re.compile(
        rf"<!-- bench:begin {re.escape(label)} -->.*?<!-- bench:end {re.escape(label)} -->\n?",
        re.S,
    )
    if pattern.search(current):
        updated = pattern.sub(lambda _: new_block, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + new_block
    path.write_text(updated)
