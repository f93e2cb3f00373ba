"""Issue 18: a task's HTTP call and its waits for Redis fit before its soft time limit, and
a pool process's result reaches the main process whole whatever signal comes meanwhile."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from billiard.exceptions import SoftTimeLimitExceeded
from billiard.pool import SIG_SOFT_TIMEOUT

from worker.infra.settings import Settings
from worker.queue.patience import REDIS_PATIENCE, patiently
from worker.queue.pool import signals_held, soft_limit_armed

ROOT = Path(__file__).resolve().parents[2]
CONTRADICTION = {
    "PREFSYNC_HTTP_TIMEOUT": "5",
    "PREFSYNC_TASK_TIME_LIMIT": "6",
    "PREFSYNC_VISIBILITY_TIMEOUT": "400",
}


def test_an_http_timeout_the_soft_time_limit_cannot_fit_is_refused_naming_both():
    with pytest.raises(ValueError) as refused:
        Settings(http_timeout=5, task_time_limit=6, visibility_timeout=400)
    message = str(refused.value)
    assert "PREFSYNC_HTTP_TIMEOUT (5s)" in message
    assert "soft time limit (1s: PREFSYNC_TASK_TIME_LIMIT 6s minus 5s)" in message
    assert "at least 11" in message


@pytest.mark.parametrize(
    ("http_timeout", "task_time_limit", "fits"),
    [(10, 60, True), (0.5, 6, True), (0.6, 6, False), (2, 8, True), (2.6, 8, False)],
)
def test_the_soft_time_limit_must_leave_half_a_second_after_one_http_call(
    http_timeout, task_time_limit, fits
):
    def make() -> Settings:
        return Settings(
            http_timeout=http_timeout, task_time_limit=task_time_limit, visibility_timeout=400
        )

    if fits:
        assert make().soft_time_limit == max(1, task_time_limit - 5)
    else:
        with pytest.raises(ValueError, match="does not fit in the soft time limit"):
            make()


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "worker.cli", "stats"],
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo"],
    ],
    ids=["cli", "worker"],
)
def test_contradictory_settings_stop_the_cli_and_the_worker_with_one_line(command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**env, **CONTRADICTION},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: settings: PREFSYNC_HTTP_TIMEOUT (5s) does not fit")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_waits_for_redis_end_at_the_deadline_not_after_the_usual_patience():
    tries = []

    def unreachable() -> None:
        tries.append(time.monotonic())
        raise redis.exceptions.ConnectionError("down")

    started = time.monotonic()
    with pytest.raises(redis.exceptions.ConnectionError):
        patiently(unreachable, until=started + 0.5)
    assert time.monotonic() - started < 0.6 < REDIS_PATIENCE
    assert len(tries) >= 2


def test_a_soft_time_limit_while_a_result_is_written_or_after_is_dropped_until_the_next_task():
    def soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    def terminate(signum, frame):
        raise SystemExit(-241)

    previous = {
        SIG_SOFT_TIMEOUT: signal.signal(SIG_SOFT_TIMEOUT, soft_limit),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }
    written = []
    try:
        with signals_held():
            os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
            written.append("first half")
            time.sleep(0.05)
            written.append("second half")
        written.append("after")  # the soft time limit was dropped: nothing raised

        with pytest.raises(SystemExit):
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                written.append("whole")
            time.sleep(0.05)  # SIGTERM arrives here, once the message is whole
        os.kill(os.getpid(), SIG_SOFT_TIMEOUT)  # between tasks: ignored
        time.sleep(0.05)
        soft_limit_armed()  # the next task starts: its soft time limit raises again
        with pytest.raises(SoftTimeLimitExceeded):
            os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert written == ["first half", "second half", "after", "whole"]


def test_a_redis_channel_whose_connection_is_gone_works_through_our_own_client():
    # What Celery does with a message of a lost connection (ack, put back, restore) goes
    # through the runtime's client, not a crash (worker.queue.reconnect).
    from types import SimpleNamespace

    from kombu.transport import redis as kombu_redis

    import worker.queue.app  # noqa: F401  (applies worker.queue.reconnect)
    from worker.delivery.runtime import runtime

    for detached in (SimpleNamespace(connection=None), SimpleNamespace(connection=object())):
        with kombu_redis.Channel.conn_or_acquire(detached) as client:
            assert client is runtime().redis


def test_a_pool_process_that_exited_is_not_watched_again_after_a_reconnect():
    from types import SimpleNamespace

    from celery.concurrency.asynpool import AsynPool

    import worker.queue.app  # noqa: F401  (applies worker.queue.reconnect)

    watched = []
    hub = SimpleNamespace(add_reader=lambda fd, *args: watched.append(fd))
    exited = SimpleNamespace(_sentinel_poll=None)
    AsynPool._track_child_process(object.__new__(AsynPool), exited, hub)
    assert watched == []
    running = SimpleNamespace(_sentinel_poll=7)
    AsynPool._track_child_process(object.__new__(AsynPool), running, hub)
    assert watched == [7]
