"""Liveness: a worker whose main process stops consuming is reported by
`prefsync worker-health` and exits by itself, to be restarted; a Redis outage longer than
the liveness timeout is neither. Real Redis, real worker processes."""

from __future__ import annotations

import os
import signal
import time

from tests.e2e.helpers import wait_until
from worker.queue.liveness import EXIT_STALLED

TIMEOUT = 3.0  # PREFSYNC_LIVENESS_TIMEOUT for these tests


def report(text: str) -> None:
    print(f"[liveness] {text}")


def healthy(run_cli, env) -> bool:
    done = run_cli(env, "worker-health", timeout=30)
    assert done.returncode in (0, 1), done
    assert "Traceback" not in done.stderr
    return done.returncode == 0


def test_a_stopped_worker_fails_its_health_check_and_passes_it_again_once_it_runs(
    prefsync_env, start_worker, run_cli
):
    env = {**prefsync_env, "PREFSYNC_LIVENESS_TIMEOUT": str(TIMEOUT)}
    assert not healthy(run_cli, env)  # no worker yet: no heartbeat
    worker = start_worker(env, concurrency=2)
    wait_until(lambda: healthy(run_cli, env), timeout=10)

    # A frozen main process (SIGSTOP: nothing in it runs, not even its watchdog, so only a
    # check from outside can see it).
    os.kill(worker.pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    wait_until(lambda: not healthy(run_cli, env), timeout=TIMEOUT + 10)
    detected_after = time.monotonic() - stopped_at
    done = run_cli(env, "worker-health")
    assert done.stderr.startswith("error: the worker stopped consuming: its last heartbeat is")
    assert worker.running

    os.kill(worker.pid, signal.SIGCONT)
    wait_until(lambda: healthy(run_cli, env), timeout=10)
    assert worker.running
    report(
        f"stopped worker: health check failed {detected_after:.1f} s after SIGSTOP "
        f"(timeout {TIMEOUT:g} s), passed again once it ran"
    )


def test_a_main_process_stuck_in_its_event_loop_exits_within_the_liveness_timeout(
    prefsync_env, start_worker, run_cli
):
    env = {**prefsync_env, "PREFSYNC_LIVENESS_TIMEOUT": str(TIMEOUT)}
    worker = start_worker(env, concurrency=2, app="tests.e2e.stallable")
    wait_until(lambda: healthy(run_cli, env), timeout=10)
    pool = [int(pid) for pid in os.popen(f"pgrep -P {worker.pid}").read().split()]
    assert len(pool) == 2

    os.kill(worker.pid, signal.SIGUSR2)  # its event loop blocks for good
    stuck_at = time.monotonic()
    worker.proc.wait(timeout=TIMEOUT + 10)
    exited_after = time.monotonic() - stuck_at

    assert worker.proc.returncode == EXIT_STALLED
    # The stall counts from the last tick of the loop (one a second) before it stuck.
    assert TIMEOUT - 1 <= exited_after <= TIMEOUT + 5
    # Its pool processes went with it: none keeps holding a message or a user lock.
    wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pool), timeout=5)
    report(f"stuck event loop: the worker exited {exited_after:.1f} s after (timeout {TIMEOUT:g}s)")


def test_a_redis_outage_longer_than_the_liveness_timeout_is_not_taken_for_a_hang(
    prefsync_env, redis_server, start_worker, run_cli
):
    env = {**prefsync_env, "PREFSYNC_LIVENESS_TIMEOUT": str(TIMEOUT)}
    worker = start_worker(env)
    wait_until(lambda: healthy(run_cli, env), timeout=10)

    redis_server.kill()
    time.sleep(2 * TIMEOUT)  # reconnecting all along: not consuming, but not stuck
    assert worker.running
    assert healthy(run_cli, env)
    redis_server.start()

    def reconnected() -> bool:
        return "Connected to" in worker.log().split("Connection to broker lost")[-1]

    wait_until(reconnected, timeout=30)
    time.sleep(TIMEOUT)
    assert worker.running
    assert healthy(run_cli, env)
