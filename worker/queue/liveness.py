"""Liveness: a worker whose main process stops consuming is seen, and ends itself.

The main process runs Celery's event loop: it takes messages from Redis, hands them to the
pool processes and reads their results. If that loop stops (as it did in the soak, where it
waited forever for bytes a corrupted pipe would never send), the process is alive, nothing
restarts it, and nothing is delivered. So:

- the loop ticks (a timer on its own event loop, every second);
- a watchdog thread writes the heartbeat file (PREFSYNC_HEARTBEAT_FILE) while the loop
  ticks, or while the worker is connecting to Redis (a Redis outage is not a hang:
  restarting would not bring Redis back);
- once the loop has not ticked for PREFSYNC_LIVENESS_TIMEOUT seconds while the process
  ran (a pause of the whole process, SIGSTOP or a frozen VM, does not count), the watchdog
  kills the pool processes and exits (code 70), so that the supervisor (compose's restart policy,
  systemd's Restart=, Kubernetes) starts a fresh worker. What the worker held is
  unacknowledged in Redis, and comes back after the visibility timeout.
- `prefsync worker-health` reads the heartbeat file and fails when it is older than
  PREFSYNC_LIVENESS_TIMEOUT: a process too stuck to exit (stopped, or its watchdog thread
  blocked) is still seen, by a healthcheck or a liveness probe that restarts it.

The timeout must outlast a legitimate pause of the loop: a warm shutdown waits for running
tasks (up to the hard time limit) plus Celery's soft shutdown (10 s).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps

from worker.infra.settings import get_settings

log = structlog.get_logger("prefsync.liveness")

EXIT_STALLED = 70  # EX_SOFTWARE
TICK = 1.0  # seconds between the event loop's ticks


def write_heartbeat(path: Path, now: float) -> None:
    """``now`` (epoch seconds) in ``path``, replaced whole so a reader never sees half."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{now}\n")
    os.replace(partial, path)


def heartbeat_age(path: Path, now: float) -> float | None:
    """Seconds since the heartbeat in ``path``; None when there is none (or it is garbled)."""
    try:
        return now - float(path.read_text())
    except (OSError, ValueError):
        return None


class Liveness(bootsteps.StartStopStep):
    """The event loop's tick and the watchdog thread (see the module's docstring)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        settings = get_settings()
        self.path = Path(settings.heartbeat_file)
        self.timeout = settings.liveness_timeout
        self.last_tick = time.monotonic()
        self.connecting = 0  # >0 while the consumer (re)connects to Redis
        self.tref = None
        self.thread: threading.Thread | None = None

    def start(self, worker: Any) -> None:
        self.tick()
        self.tref = worker.timer.call_repeatedly(TICK, self.tick)
        consumer = getattr(worker, "consumer", None)
        if consumer is not None:
            consumer.ensure_connected = self.counted(consumer.ensure_connected)
        self.thread = threading.Thread(
            target=self.watch, args=(worker,), name="prefsync-liveness", daemon=True
        )
        self.thread.start()

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
        # The watchdog keeps watching a warm shutdown (which can hang as well), so it only
        # stops with the process.

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    def counted(self, ensure_connected: Any) -> Any:
        def ensure(connection: Any) -> Any:
            self.connecting += 1
            try:
                return ensure_connected(connection)
            finally:
                self.connecting -= 1
                self.tick()

        return ensure

    def watch(self, worker: Any) -> None:
        interval = min(TICK, self.timeout / 5)
        while True:
            before = time.monotonic()
            time.sleep(interval)
            # Slept far longer than asked: the whole process was paused (SIGSTOP, a frozen
            # VM), not only its event loop. Give the loop its time to tick again.
            paused = time.monotonic() - before > interval + max(1.0, self.timeout / 2)
            if self.connecting or paused:
                self.tick()
            stalled = time.monotonic() - self.last_tick
            if stalled <= self.timeout:
                try:
                    write_heartbeat(self.path, time.time())
                except OSError as exc:
                    log.warning("heartbeat not written", path=str(self.path), error=str(exc))
                continue
            log.critical(
                "the worker's main process stopped consuming: exiting so that it is restarted",
                stalled_for=round(stalled, 1),
                liveness_timeout=self.timeout,
            )
            kill_pool_processes(worker)
            os._exit(EXIT_STALLED)


def kill_pool_processes(worker: Any) -> None:
    """SIGKILL the pool processes: orphans would go on holding messages and user locks."""
    processes = getattr(getattr(getattr(worker, "pool", None), "_pool", None), "_pool", None)
    for process in processes or ():
        try:
            os.kill(process.pid, signal.SIGKILL)
        except (OSError, TypeError):  # gone already, or never started
            continue
