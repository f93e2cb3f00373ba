"""The ingress benchmark: ``python -m bench.ingress [--seconds S] [--workers N ...]``.

Starts a throwaway redis-server and ``prefsync serve``, creates an ingress credential,
fetches a token at /oauth/token, and drives ``POST /webhooks`` with ``wrk`` (a compiled
load generator; apt-get install wrk) over keep-alive connections, one event per request,
each with its own event id and user (a Lua script builds the bodies):

* accepted/s: 202 answers per second with 64 connections sending as fast as answered;
  every other answer is counted and reported (there should be none);
* p50/p99 at about 1,000/s: 25 connections, each pausing after every answer for what a
  short probe says makes 1,000/s (wrk cannot aim at a rate, wrk2 is not packaged; the
  rate reached is reported beside the latency);
* beside it, ``prefsync enqueue`` of as many events from one JSON Lines file, in one
  process, as a producer would.

No worker runs: the events stay in Redis, and only the ingress is measured. Everything
shares this machine's cores (wrk, Redis, the ingress, and anyone else's work): the load
average at the start of each measure is printed with it. Results go to bench/RESULTS.md,
in the block between the ``ingress:begin``/``ingress:end`` markers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tests.processes import REPO_ROOT, start_ingress, start_redis

RESULTS = REPO_ROOT / "bench" / "RESULTS.md"
EXAMPLE = REPO_ROOT / "examples" / "events" / "event-created.json"
BEGIN, END = "<!-- ingress:begin -->", "<!-- ingress:end -->"
MARKER = "EVENTNUMBER"  # replaced by a request counter in the Lua script
FAST_CONNECTIONS = 64
PACED_CONNECTIONS = 25
TENANT = json.loads(EXAMPLE.read_text())["parameters"]["entity"]["organization_id"]


@dataclass
class Load:
    label: str
    requests: int
    non_2xx: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    load_average: float

    @property
    def accepted_per_second(self) -> float:
        return (self.requests - self.non_2xx) / self.seconds


def event_template() -> str:
    """The example event as one JSON line, its id and user made unique by MARKER."""
    event = json.loads(EXAMPLE.read_text())
    entity = event["parameters"]["entity"]
    entity["id"] = f"bench-{MARKER}"
    entity["user"]["organization_user_id"] = f"user-{MARKER}@example.com"
    return json.dumps(event)


def lua_script(token: str, delay_ms: float | None) -> str:
    """A wrk script: POST /webhooks with a new event each request, and pauses if asked."""
    template = event_template().replace("%", "%%").replace(MARKER, "%d")
    pause = f"function delay() return {delay_ms} end" if delay_ms else ""
    return f"""
counter = 0
template = {json.dumps(template)}
function setup(thread)
  thread:set("offset", math.random(1, 1000000000))
end
function request()
  counter = counter + 1
  local body = string.format(template, offset + counter, offset + counter)
  return wrk.format("POST", "/webhooks", {{
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer {token}",
  }}, body)
end
{pause}
"""


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, script: Path, connections: int, seconds: float, label: str) -> Load:
    load_average = os.getloadavg()[0]
    done = subprocess.run(
        [
            "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
            "-s", str(script), f"{url}/webhooks",
        ],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    )  # fmt: skip
    out = done.stdout
    requests_done = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)[1])
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", out)
    elapsed = float(duration[1]) * {"ms": 0.001, "s": 1.0, "m": 60.0}[duration[2]]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = {p: float(v) * _UNIT[unit] for p, v, unit in _LATENCY.findall(out)}
    return Load(
        label=label,
        requests=requests_done,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        errors=sum(int(n) for n in errors.groups()) if errors else 0,
        seconds=elapsed,
        p50_ms=latency.get("50", float("nan")),
        p99_ms=latency.get("99", float("nan")),
        load_average=load_average,
    )


def paced_delay(url: str, script: Path, bearer: str) -> float:
    """The pause (ms) after each answer that makes PACED_CONNECTIONS send about 1,000
    requests/s: a first guess, corrected by the latency a short probe sees."""
    delay = float(PACED_CONNECTIONS)  # ms: 1,000/s if answers took no time
    for _ in range(2):  # the second probe corrects what the first one's guess missed
        script.write_text(lua_script(bearer, delay))
        probe = run_wrk(url, script, PACED_CONNECTIONS, 3, "probe")
        cycle_ms = PACED_CONNECTIONS * 1000 / max(probe.accepted_per_second, 1)
        delay = max(1.0, delay + PACED_CONNECTIONS - cycle_ms)
    return delay


def enqueue_rate(env: dict[str, str], workdir: Path, events: int) -> tuple[float, float]:
    """``prefsync enqueue`` of ``events`` new events from one file: (events/s, load)."""
    template = event_template()
    path = workdir / "events.jsonl"
    with path.open("w") as out:
        for number in range(events):
            out.write(template.replace(MARKER, f"enqueue-{number}") + "\n")
    load_average = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "worker.cli", "enqueue", str(path)],
        cwd=REPO_ROOT, env=env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    return events / (time.perf_counter() - started), load_average


def token(env: dict[str, str], url: str) -> str:
    created = subprocess.run(
        [sys.executable, "-m", "worker.cli", "ingress", "add", TENANT, "--json"],
        cwd=REPO_ROOT, env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    credential = json.loads(created.stdout)
    answer = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(credential["client_id"], credential["client_secret"]),
        timeout=10,
    )
    answer.raise_for_status()
    return answer.json()["access_token"]


def measure(workdir: Path, seconds: float, workers: list[int]) -> tuple[list[Load], float, float]:
    redis_server = start_redis(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    env.update(PREFSYNC_REDIS_URL=redis_server.url, PREFSYNC_LOG_FORMAT="json")
    loads: list[Load] = []
    try:
        for count in workers:
            log = workdir / f"ingress-{count}.log"
            ingress = start_ingress(env, log, ["--workers", str(count)])
            url = ingress.url
            try:
                bearer = token(env, url)
                fast = workdir / "fast.lua"
                fast.write_text(lua_script(bearer, None))
                run_wrk(url, fast, FAST_CONNECTIONS, 3, "warm-up")
                label = f"{count} process(es), {FAST_CONNECTIONS} connections, flat out"
                loads.append(run_wrk(url, fast, FAST_CONNECTIONS, seconds, label))
                paced = workdir / "paced.lua"
                paced.write_text(lua_script(bearer, paced_delay(url, paced, bearer)))
                label = f"{count} process(es), {PACED_CONNECTIONS} connections, ~1,000/s"
                loads.append(run_wrk(url, paced, PACED_CONNECTIONS, seconds, label))
            finally:
                ingress.stop()
        events = max(int(loads[0].accepted_per_second * seconds), 10_000)
        rate, load_average = enqueue_rate(env, workdir, events)
    finally:
        redis_server.stop()
    return loads, rate, load_average


def report(loads: list[Load], enqueue: float, enqueue_load: float) -> str:
    lines = [
        BEGIN,
        f"### Ingress: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{os.cpu_count()} cores (shared: load average shown per measure)",
        "",
        "| measure | requests | accepted/s | non-2xx | socket errors | p50 ms | p99 ms | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load in loads:
        lines.append(
            f"| {load.label} | {load.requests:,} | {load.accepted_per_second:,.0f} | "
            f"{load.non_2xx} | {load.errors} | {load.p50_ms:.1f} | {load.p99_ms:.1f} | "
            f"{load.load_average:.1f} |"
        )
    lines += [
        f"| `prefsync enqueue` of a JSON Lines file, one process | - | {enqueue:,.0f} "
        f"(events/s) | - | - | - | - | {enqueue_load:.1f} |",
        END,
    ]
    return "\n".join(lines)


def write_results(block: str) -> None:
    text = RESULTS.read_text()
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## The ingress (`python -m bench.ingress`)\n\n" + block + "\n"
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingress", description=__doc__)
    parser.add_argument("--seconds", type=float, default=15, help="length of each measure")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="ingress processes to try"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update RESULTS.md")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not on PATH (apt-get install wrk)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="prefsync-bench-ingress-") as workdir:
        loads, enqueue, enqueue_load = measure(Path(workdir), args.seconds, args.workers)
    block = report(loads, enqueue, enqueue_load)
    print(block)
    if not args.no_write:
        write_results(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
