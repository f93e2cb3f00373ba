"""The Redis soak: many Redis faults in a row under continuous load, against one worker.

Each fault is a clean restart (SIGTERM) or a crash (SIGKILL), alternately, of a
redis-server with every write on disk before it answers (``appendfsync always``), back on
the same port after 1 to 10 s. A producer keeps enqueueing meanwhile (retrying what Redis
refused), with a burst of ``burst`` events just before each fault so that it finds that many
deliveries in flight; the worker delivers to the local Braze look-alike. After each fault the soak
waits for deliveries to resume; a worker that exited is restarted at once, as a
supervisor would (and counted); a worker still running that delivers nothing for
``hang_after`` seconds is hung (counted, its stacks dumped with py-spy when available, then
killed and restarted). At the end the load stops and every event the producer was told
was enqueued must reach Braze.

Used by tests/e2e/test_soak.py (short, in `make test`; 50 faults in `make chaos`) and by
hand: ``python -m tests.e2e.soak --faults 20 --profile short``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import REPO_ROOT, RedisServer
from tests.e2e.helpers import braze_attributes, braze_config, free_port, wait_until
from tests.fakes.destinations import FakeDestinations

# The settings each profile runs with, on top of a local Redis and the fake destinations.
# "defaults": production's time limits, HTTP timeout and retry schedule (only the
# visibility timeout is shorter, so that the soak can tell a stranded message from a lost
# one in minutes rather than hours: it must outlast the schedule, 181 s). "short": the
# short limits under which the soak found the worker's crash (a 1 s soft time limit).
PROFILES: dict[str, dict[str, str]] = {
    "defaults": {"PREFSYNC_VISIBILITY_TIMEOUT": "200"},
    "short": {
        "PREFSYNC_TASK_TIME_LIMIT": "6",
        "PREFSYNC_HTTP_TIMEOUT": "0.5",
        "PREFSYNC_RETRY_COUNTDOWNS": "0.2,0.5,1,2,3",
        "PREFSYNC_RATE_LIMIT_MAX_WAIT": "2",
        "PREFSYNC_VISIBILITY_TIMEOUT": "12",
    },
}

PRODUCER = """
import signal, sys, time
from worker.producer import BrokerUnavailable
from worker.producer import enqueue_many

size, pace, burst = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
stop, bursts = [], []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
signal.signal(signal.SIGUSR1, lambda *_: bursts.append(1))

def event(n):
    user = f"soak-{n}"
    return {"type": "event.created", "parameters": {"entity": {
        "id": f"e-{n}", "organization_id": "acme", "status": "confirmed",
        "created_at": "2026-11-20T09:00:00Z", "updated_at": "2026-11-20T09:00:00Z",
        "user": {"id": f"pmp-{user}", "organization_user_id": user},
        "consents": {"purposes": [{"id": "newsletter", "enabled": True}]}}}}

n = 0
while not stop:
    count = burst if bursts and not bursts.clear() else size
    batch = [event(m) for m in range(n, n + count)]
    while True:
        try:
            enqueue_many(batch)  # 100 events a message
            break
        except BrokerUnavailable:
            time.sleep(0.2)
    print(n, n + count, flush=True)
    n += count
    time.sleep(pace)
"""


class Producer:
    """Enqueues ``size`` events a message (one Braze call), one new user each, every
    ``pace`` seconds, retrying a message Redis refused until it is acknowledged; on
    ``burst()``, ``burst`` events at once (in messages of 100) instead."""

    def __init__(self, env: dict[str, str], size: int, pace: float, burst: int) -> None:
        self.acknowledged = 0  # events soak-0 .. soak-(acknowledged - 1)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(size), str(pace), str(burst)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.acknowledged = int(line.split()[1])

    def burst(self) -> None:
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.returncode in (0, -signal.SIGTERM), self.proc.stderr.read()


class Worker:
    """A ``celery worker`` subprocess in its own process group, restarted when it exits."""

    def __init__(self, env: dict[str, str], directory: Path, concurrency: int) -> None:
        self.env = env
        self.directory = directory
        self.concurrency = concurrency
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def log_path(self) -> Path:
        return self.directory / f"worker-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        command = [
            sys.executable, "-m", "celery", "-A", "worker", "--quiet", "worker",
            "--loglevel=INFO", f"--concurrency={self.concurrency}", "--pool=prefork",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "-n", f"soak{self.starts}@%h",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**self.env, "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(
            lambda: " ready." in self.log_path.read_text(errors="replace") or not self.running,
            timeout=60,
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def dump_stacks(self) -> str:
        """The main process's Python stacks (py-spy, when installed)."""
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if self.proc is None or not Path(py_spy).exists():
            return "(py-spy not available)"
        done = subprocess.run(
            [py_spy, "dump", "--pid", str(self.proc.pid)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.stdout + done.stderr

    def last_lines(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Fault:
    kind: str  # "restart" (SIGTERM) or "crash" (SIGKILL)
    down: float  # seconds Redis was away
    in_flight: int  # events enqueued but not yet delivered when Redis went away
    resumed_after: float | None = None  # first delivery after Redis was back, seconds
    exited: bool = False  # the worker exited (restarted as a supervisor would)
    hung: bool = False  # alive, delivering nothing for hang_after seconds


@dataclass
class SoakResult:
    profile: str
    faults: list[Fault] = field(default_factory=list)
    events: int = 0  # acknowledged by enqueue
    lost: int = 0  # acknowledged, never delivered
    duplicates: int = 0  # users sent more than once (objects in accepted Braze calls)
    exit_reasons: list[str] = field(default_factory=list)
    hang_dumps: list[str] = field(default_factory=list)
    drained_after: float = 0.0

    @property
    def hangs(self) -> int:
        return sum(f.hung for f in self.faults)

    @property
    def exits(self) -> int:
        return sum(f.exited for f in self.faults)

    def summary(self) -> str:
        resumes = [f.resumed_after for f in self.faults if f.resumed_after is not None]
        median = statistics.median(resumes) if resumes else float("nan")
        longest = max(resumes, default=float("nan"))
        kinds = Counter(f.kind for f in self.faults)
        downs = [f.down for f in self.faults]
        flights = [f.in_flight for f in self.faults]
        return (
            f"soak ({self.profile}): {len(self.faults)} Redis faults ({kinds['restart']} clean "
            f"restarts, {kinds['crash']} SIGKILL; down {min(downs, default=0):.1f}-"
            f"{max(downs, default=0):.1f} s; {min(flights, default=0)}-"
            f"{max(flights, default=0)} events in flight), {self.events} events: "
            f"{self.hangs} hangs, {self.exits} worker exits, {self.lost} lost, delivery "
            f"resumed {median:.1f} s (median) / {longest:.1f} s (max) after Redis was back, "
            f"{self.duplicates} duplicates sent; drained {self.drained_after:.1f} s after "
            f"the load stopped"
        )


def soak(
    directory: Path,
    faults: int,
    profile: str = "short",
    down: tuple[float, float] = (1.0, 10.0),
    hang_after: float = 60.0,
    concurrency: int = 2,
    size: int = 20,
    pace: float = 0.5,
    burst: int = 2000,
    seed: int | None = None,
    log=print,
) -> SoakResult:
    rng = random.Random(seed)
    result = SoakResult(profile)
    redis_dir = directory / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    binary = shutil.which("redis-server") or "redis-server"
    redis_server = RedisServer(binary, free_port(), redis_dir)
    redis_server.start(["--appendonly", "yes", "--appendfsync", "always"])
    fake = FakeDestinations().start()
    fake.set_delay("braze", 0.05)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    env.update(
        PREFSYNC_REDIS_URL=redis_server.url,
        PREFSYNC_ALLOW_HOSTS=fake.host_port,
        PREFSYNC_LOG_FORMAT="json",
        PREFSYNC_HEARTBEAT_FILE=str(directory / "worker.heartbeat"),
        PREFSYNC_ALLOW_DEV_KEY="1",  # sealed with this machine's development key
        **PROFILES[profile],
    )
    put = subprocess.run(
        [sys.executable, "-m", "worker.cli", "connectors", "put", "acme", "-"],
        cwd=REPO_ROOT,
        env=env,
        input=json.dumps(braze_config(fake.url)),
        capture_output=True,
        text=True,
    )
    assert put.returncode == 0, put.stderr
    worker = Worker(env, directory, concurrency)
    producer = Producer(env, size, pace, burst)

    def delivered_users() -> set[str]:
        return {obj["external_id"] for obj in braze_attributes(fake.calls("braze"))}

    def last_delivery() -> float:
        calls = [c.at for c in fake.calls("braze") if c.status == 201]
        return max(calls, default=0.0)

    try:
        wait_until(lambda: last_delivery() > 0, timeout=60, message="nothing delivered")
        for number in range(faults):
            time.sleep(rng.uniform(1.0, 3.0))  # under load for a moment
            # Then a burst, so that the fault finds about ``burst`` deliveries in flight
            # (once the backlog of the previous fault is mostly delivered).
            with contextlib.suppress(AssertionError):
                wait_until(
                    lambda: producer.acknowledged - len(delivered_users()) < burst // 2,
                    timeout=120,
                    interval=0.5,
                )
            target = producer.acknowledged + burst
            producer.burst()
            wait_until(lambda target=target: producer.acknowledged >= target, timeout=60)
            time.sleep(rng.uniform(0.2, 1.0))
            kind = "restart" if number % 2 == 0 else "crash"
            in_flight = producer.acknowledged - len(delivered_users())
            (redis_server.stop if kind == "restart" else redis_server.kill)()
            down_at = time.monotonic()
            time.sleep(rng.uniform(*down))
            redis_server.start()
            up_at, up_wall = time.monotonic(), time.time()
            fault = Fault(kind, up_at - down_at, in_flight)
            result.faults.append(fault)
            waiting_since = up_at  # for this worker process to deliver again
            while last_delivery() < up_wall:
                if not worker.running:
                    fault.exited = True
                    result.exit_reasons.append(worker.last_lines(8))
                    worker.start()
                    waiting_since = time.monotonic()
                elif time.monotonic() - waiting_since > hang_after:
                    fault.hung = True
                    result.hang_dumps.append(worker.dump_stacks() + "\n" + worker.last_lines())
                    worker.kill()
                    worker.start()
                    waiting_since = time.monotonic()
                time.sleep(0.05)
            fault.resumed_after = last_delivery() - up_wall
            log(
                f"fault {number + 1}/{faults}: {kind}, down {fault.down:.1f} s, "
                f"{in_flight} in flight, resumed after {fault.resumed_after:.1f} s"
                + (" (worker exited)" if fault.exited else "")
                + (" (worker HUNG)" if fault.hung else "")
            )
    finally:
        producer.stop()
    result.events = producer.acknowledged
    expected = {f"soak-{n}" for n in range(result.events)}
    stopped, stopped_wall = time.monotonic(), time.time()
    # Drained once every event is delivered; lost what is still missing when nothing was
    # delivered for two visibility timeouts (what the worker held comes back after one,
    # the outbox's copy after the next sweep) and a minute.
    visibility = float(env.get("PREFSYNC_VISIBILITY_TIMEOUT", 3600))
    while not expected <= delivered_users() and worker.running:
        if time.time() - max(last_delivery(), stopped_wall) > 2 * visibility + 60:
            break
        time.sleep(0.5)
    result.drained_after = time.monotonic() - stopped
    result.lost = len(expected - delivered_users())
    sends = Counter(obj["external_id"] for obj in braze_attributes(fake.calls("braze")))
    result.duplicates = sum(n - 1 for n in sends.values())
    worker.kill()
    fake.stop()
    redis_server.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=50)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="short")
    parser.add_argument("--min-down", type=float, default=1.0)
    parser.add_argument("--max-down", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--burst", type=int, default=2000, help="events enqueued before a fault")
    parser.add_argument("--pace", type=float, default=0.5, help="seconds between messages")
    parser.add_argument("--keep", action="store_true", help="keep the logs' directory")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="prefsync-soak-"))
    result = soak(
        directory,
        args.faults,
        args.profile,
        (args.min_down, args.max_down),
        burst=args.burst,
        pace=args.pace,
        seed=args.seed,
    )
    for dump in result.hang_dumps:
        print("---- hung worker ----\n" + dump)
    for reason in result.exit_reasons:
        print("---- worker exit ----\n" + reason)
    print(result.summary())
    print(f"logs: {directory}" if args.keep else "")
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
