"""Running a scenario: the shared stack (Redis, fake), the system under test (prefsync's
worker or the naive baseline), and one measured run from the first enqueue to the last
event's end.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import redis
import requests

from bench import feed, naive
from bench.events import EventFactory, braze_config, brevo_config
from bench.metrics import RunResult
from bench.procs import cpu_seconds, memory, start_fake, tree_cpu_seconds
from bench.scenarios import Scenario
from tests.processes import Process, RedisServer, start_redis, start_worker

POLL = 0.02  # seconds between looks at the progress


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


class Stack:
    """Redis and the fake destination, shared by every scenario and system."""

    def __init__(
        self, workdir: Path, redis_url: str | None, brevo_limit: int, brevo_window: float
    ) -> None:
        self.workdir = workdir
        self.started: list[Process | RedisServer] = []
        self.http = requests.Session()
        self.redis_pid: int | None = None  # None: a Redis we did not start (its CPU unknown)
        try:
            if redis_url is None:
                redis_server = start_redis(workdir)
                self.started.append(redis_server)
                self.redis_pid = redis_server.pid
                redis_url = redis_server.url
            fake_process, self.fake_url = start_fake(workdir, brevo_limit, brevo_window)
            self.started.append(fake_process)
            self.fake_pid = fake_process.pid
        except BaseException:
            self.close()
            raise
        db = int(urlsplit(redis_url).path.strip("/") or 0)
        self.redis_url = _with_db(redis_url, db)
        self.naive_broker = _with_db(redis_url, db + 1)  # the baseline's queue apart
        self.redis = redis.Redis.from_url(self.redis_url)
        host_port = urlsplit(self.fake_url).netloc
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
        # Default settings but for where Redis and the fake are.
        self.env.update(
            PREFSYNC_REDIS_URL=self.redis_url,
            PREFSYNC_ALLOW_HOSTS=host_port,
            PREFSYNC_SENDINBLUE_API_URL=f"{self.fake_url}/v3",
            BENCH_NAIVE_BROKER=self.naive_broker,
            BENCH_FAKE_URL=self.fake_url,
        )
        # The runner is the producer: its worker.* imports must see the same settings.
        os.environ.update(
            {k: v for k, v in self.env.items() if k.startswith(("PREFSYNC_", "BENCH_"))}
        )
        naive.app.conf.broker_url = self.naive_broker

    def fake_stats(self, samples: bool = False) -> dict[str, Any]:
        answer = self.http.get(f"{self.fake_url}/_bench/stats", params={"samples": int(samples)})
        answer.raise_for_status()
        return answer.json()

    def redis_commands(self) -> dict[str, tuple[int, int]]:
        """Redis's command statistics: command -> (calls, microseconds of Redis CPU)."""
        stats = self.redis.info("commandstats")
        return {k.removeprefix("cmdstat_"): (v["calls"], v["usec"]) for k, v in stats.items()}

    def redis_commands_since(
        self, before: dict[str, tuple[int, int]]
    ) -> tuple[dict[str, int], int]:
        """Commands per name since ``before`` (INFO itself left out), and Redis CPU µs."""
        after = self.redis_commands()
        calls = {
            name: count - before.get(name, (0, 0))[0]
            for name, (count, _) in after.items()
            if name != "info"
        }
        usec = sum(u - before.get(n, (0, 0))[1] for n, (_, u) in after.items() if n != "info")
        return calls, usec

    def cpu(self, system: System) -> dict[str, float]:
        """CPU seconds used so far by each part of the tree: the system's workers (main
        processes and pools), Redis, the fake and this process (the producer)."""
        producer = os.times()
        used = {
            "worker": sum(tree_cpu_seconds(w.pid) for w in system.workers),
            "fake": cpu_seconds(self.fake_pid),
            "producer": producer.user + producer.system,
        }
        if self.redis_pid is not None:
            used["redis"] = cpu_seconds(self.redis_pid)
        return used

    def fake_reset(self) -> None:
        self.http.post(f"{self.fake_url}/_bench/reset").raise_for_status()

    def close(self) -> None:
        self.http.close()
        if hasattr(self, "redis"):
            self.redis.close()
        for process in reversed(self.started):
            process.stop()


class System(Protocol):
    """What a run needs from the system under test."""

    name: str
    workers: list[Process]  # one per node; the first is profiled and its memory read
    polls_redis: bool  # whether ended() sends a command to Redis

    def sink(self) -> feed.Sink: ...

    def ended(self) -> tuple[int, int, dict[str, int]]:
        """Events ended so far in this scenario: (ok, failed, outcome counts)."""
        ...

    def stop(self) -> None: ...


def _start_workers(
    what: str, app: str, node: str, concurrency: int, nodes: int, env: dict[str, str], log: Path
) -> list[Process]:
    """``nodes`` Celery worker nodes (``-n NODE-1@host``, ``-n NODE-2@host``...) on the
    same Redis, each with ``concurrency`` pool processes and a log of its own."""
    workers: list[Process] = []
    try:
        for number in range(1, nodes + 1):
            name, path = (node, log) if nodes == 1 else (f"{node}-{number}", _numbered(log, number))
            command = worker_command(app, name, concurrency)
            workers.append(start_worker(f"{what} {name}", command, env, path))
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return workers


def _numbered(log: Path, number: int) -> Path:
    return log.with_name(f"{log.stem}-{number}{log.suffix}")


def worker_command(app: str, name: str, concurrency: int) -> list[str]:
    # What `prefsync worker --concurrency N` runs when its output is not a terminal.
    return [
        sys.executable, "-m", "celery", "-A", app, "--quiet", "worker", "--loglevel=INFO",
        f"--concurrency={concurrency}", "-n", f"{name}@%h",
    ]  # fmt: skip


class Prefsync:
    """prefsync's own worker, default settings, one connector for the scenario's tenant."""

    name = "prefsync"
    polls_redis = True

    def __init__(
        self, stack: Stack, scenario: Scenario, concurrency: int, log: Path, nodes: int = 1
    ) -> None:
        from worker.connectors.config import parse_config
        from worker.delivery.runtime import runtime
        from worker.infra.settings import get_settings

        self.tenant = f"bench-{scenario.name}"
        if scenario.service == "braze":
            raw = braze_config(stack.fake_url)
        else:
            raw = brevo_config(upsert=scenario.upsert)
        config = parse_config(raw, allow_hosts=get_settings().allow_hosts)
        self.runtime = runtime()
        self.runtime.configs.put(self.tenant, config)
        self.workers = _start_workers(
            "prefsync worker", "worker", "bench-prefsync", concurrency, nodes, stack.env, log
        )

    def sink(self) -> feed.Sink:
        return feed.prefsync_sink()

    def ended(self) -> tuple[int, int, dict[str, int]]:
        counts = self.runtime.recorder.counts(self.tenant)
        ok = counts.get("delivered", 0) + counts.get("skipped", 0)
        return ok, counts.get("dead_lettered", 0), counts

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


class Naive:
    """NAIVE BASELINE (bench/naive.py): one Celery task and one HTTP call per event."""

    name = "naive"
    polls_redis = False

    def __init__(
        self, stack: Stack, scenario: Scenario, concurrency: int, log: Path, nodes: int = 1
    ) -> None:
        self.stack = stack
        self.service = scenario.service
        self.task = f"naive.{scenario.service}"
        self.workers = _start_workers(
            "naive worker", "bench.naive", "bench-naive", concurrency, nodes, stack.env, log
        )

    def sink(self) -> feed.Sink:
        return feed.Sink("NAIVE BASELINE apply_async per event", self._submit, 1)

    def _submit(self, payloads: list[dict[str, Any]]) -> None:
        naive.enqueue(self.task, payloads)

    def ended(self) -> tuple[int, int, dict[str, int]]:
        stats = self.stack.fake_stats()[self.service]
        counts = {f"HTTP {k}": v for k, v in stats["by_status"].items()}
        return stats["accepted_calls"], stats["calls"] - stats["accepted_calls"], counts

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def measure(
    stack: Stack,
    system: System,
    scenario: Scenario,
    run: int,
    stall_timeout: float,
    on_start: Callable[[], None] | None = None,
) -> RunResult:
    """One run: feed the events, wait until each has ended, read the fake and the worker.

    Gives up (``complete=False``) when no event ended for ``stall_timeout`` seconds.
    """
    factory = EventFactory(
        f"bench-{scenario.name}",
        f"r{run}-{time.time_ns()}",
        scenario.users,
        scenario.emails,
        scenario.unknown_every,
    )
    stack.fake_reset()
    ok0, failed0, counts0 = system.ended()
    redis0 = stack.redis_commands()
    cpu0 = stack.cpu(system)
    if on_start is not None:
        on_start()
    fed = feed.feed(system.sink(), factory, scenario.events, scenario.rate)
    fed_at = time.time()
    ok_at_fed, failed_at_fed, _ = system.ended()
    polls = 1
    last, progress_at, complete = -1, time.monotonic(), True
    while True:
        for worker in system.workers:
            worker.check_running()
        ok, failed, counts = system.ended()
        polls += 1
        done = ok - ok0 + failed - failed0
        if done >= scenario.events:
            break
        if done != last:
            last, progress_at = done, time.monotonic()
        elif time.monotonic() - progress_at > stall_timeout:
            complete = False
            break
        time.sleep(POLL)
    finished = time.time()
    cpu = {part: used - cpu0[part] for part, used in stack.cpu(system).items()}
    redis_calls, redis_usec = stack.redis_commands_since(redis0)
    if system.polls_redis:  # the runner's own HGETALL per look at the progress
        redis_calls["hgetall"] = redis_calls.get("hgetall", 0) - polls
    stats = stack.fake_stats(samples=True)[scenario.service]
    accepted_span = (stats["last_accepted_at"] or fed.first_stamp) - fed.first_stamp
    return RunResult(
        system=system.name,
        run=run,
        events=scenario.events,
        complete=complete,
        ok=ok - ok0,
        failed=failed - failed0,
        outcomes={k: v - counts0.get(k, 0) for k, v in counts.items() if v - counts0.get(k, 0)},
        feed_seconds=fed.seconds,
        seconds=finished - fed.first_stamp,
        drained=ok - ok_at_fed + failed - failed_at_fed,
        drain_seconds=finished - fed_at,
        latencies=stats["latencies"],
        calls=stats["calls"],
        accepted_calls=stats["accepted_calls"],
        rate_limited=stats["rate_limited"],
        objects=stats["objects"],
        users=stats["users"],
        peak_calls_per_window=stats["peak_calls_per_window"],
        accepted_calls_per_s=stats["accepted_calls"] / accepted_span if accepted_span > 0 else None,
        memory=memory(system.workers[0].pid),
        cpu_seconds=cpu,
        redis_calls={k: v for k, v in redis_calls.items() if v > 0},
        redis_usec=redis_usec,
    )
