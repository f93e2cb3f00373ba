"""Flower as shipped: the real Flower package against a real worker, on a redis-server loaded
with the ACL file of `prefsync redis-acl`, connected as the ``flower`` user. Every page it
needs answers (workers, a worker's page, tasks, the broker's queue lengths), `celery inspect`
replies, and what Flower could use to steer is refused: by the worker, control commands
other than inspection (unless PREFSYNC_WORKER_REMOTE_CONTROL opts in); by Redis, a queue's
message bodies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis
import requests
from celery import Celery

from tests.e2e import test_redis_acl
from tests.e2e.conftest import REPO_ROOT
from tests.e2e.helpers import (
    braze_attributes,
    braze_config,
    consent_event,
    free_port,
    jsonl,
    tail,
    wait_until,
)
from tests.e2e.test_redis_acl import PASSWORDS, client_of, env_of

# Redis started with the ACL file of `prefsync redis-acl`.
acl_redis = test_redis_acl.acl_redis

if importlib.util.find_spec("flower") is None:
    pytest.fail(
        "Flower is not installed: `make install` installs it (the ops extra)", pytrace=False
    )

FLOWER_AUTH = ("operator", "flower-ui-pw-0123")
PERSON = "carol@example.com"
# Every control command that changes what a worker does, as `celery control` sends them.
STEERING = {
    "cancel_consumer": {"queue": "celery"},
    "add_consumer": {"queue": "elsewhere"},
    "shutdown": {},
    "pool_restart": {},
    "pool_shrink": {"n": 1},
    "rate_limit": {"task_name": "prefsync.route", "rate_limit": "1/h"},
    "time_limit": {"task_name": "prefsync.route", "soft": 1, "hard": 2},
    "revoke": {"task_id": "00000000-0000-0000-0000-000000000000"},
    "disable_events": {},
}


class Flower:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path) -> None:
        self.proc, self.port, self.log_path = proc, port, log_path

    def get(self, path: str, auth=FLOWER_AUTH) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.port}{path}", auth=auth, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def start_flower(tmp_path) -> Iterator:
    started: list[Flower] = []

    def start(env: dict[str, str]) -> Flower:
        port = free_port()
        log_path = tmp_path / f"flower-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "worker", "flower",
                 "--address=127.0.0.1", f"--port={port}", "--enable_events=False"],
                cwd=REPO_ROOT,
                env={**env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        flower = Flower(proc, port, log_path)
        started.append(flower)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"flower exited:\n{tail(log_path)}")
            with contextlib.suppress(requests.ConnectionError):
                return flower.get("/healthcheck").status_code == 200
            return False

        wait_until(healthy, timeout=30, message=lambda: f"no /healthcheck:\n{tail(log_path)}")
        return flower

    yield start
    for flower in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(flower.proc.pid, signal.SIGKILL)
        flower.proc.wait()


def broadcast(url: str, command: str, arguments: dict) -> list[dict]:
    """``command`` sent to every worker, as `celery control` (or Flower) sends it; the
    replies (the test's one worker's, or none within 5 s)."""
    client = Celery(broker=url)
    # As prefsync's app (and so Flower) declares them: reply queues without an expiry, whose
    # bindings kombu would keep alive with Lua, which no Redis user of the ACL file may run.
    client.conf.control_queue_expires = None
    try:
        return client.control.broadcast(
            command, arguments=arguments, reply=True, timeout=5, limit=1
        )
    finally:
        client.close()


def test_flower_shows_workers_tasks_and_queues_as_the_flower_user_and_cannot_steer(
    acl_redis, prefsync_env, fake_destinations, start_worker, start_flower, run_cli
):
    admin = env_of(prefsync_env, acl_redis, "admin")
    flower_env = env_of(prefsync_env, acl_redis, "flower")
    put = run_cli(
        admin,
        "connectors",
        "put",
        "acme",
        "-",
        input=json.dumps(braze_config(fake_destinations.url)),
    )
    assert put.returncode == 0, put.stderr
    worker = start_worker(env_of(prefsync_env, acl_redis, "worker"), concurrency=1)
    node = f"{worker.name}@{socket.gethostname()}"
    flower = start_flower(flower_env)

    def enqueue(number: int) -> None:
        # Each event changes the person's consent: each is sent to Braze.
        event = consent_event(
            f"ev-{number}", PERSON, f"2026-11-20T09:0{number}:00Z", {"newsletter": number % 2 == 1}
        )
        done = run_cli(
            env_of(prefsync_env, acl_redis, "producer"), "enqueue", "-", input=jsonl([event])
        )
        assert done.returncode == 0, done.stderr

    enqueue(1)
    wait_until(lambda: braze_attributes(fake_destinations.calls("braze")), timeout=15)

    # The worker's page, and the workers as the API lists them (inspection through Redis).
    page = flower.get(f"/worker/{node}")
    assert page.status_code == 200, page.text
    workers = flower.get("/api/workers?refresh=1")
    assert workers.status_code == 200, workers.text
    assert "stats" in workers.json()[node] and workers.json()[node]["active_queues"]
    # The task events Flower captured: what each task was, and that it succeeded.
    tasks = wait_until(
        lambda: {t["name"]: t for t in flower.get("/api/tasks").json().values()}, timeout=10
    )
    assert tasks["prefsync.route"]["state"] == "SUCCESS"
    # The API wants Flower's login, as the pages do.
    assert flower.get("/api/tasks", auth=None).status_code == 401
    # The broker's queue lengths.
    queues = flower.get("/api/queues/length").json()["active_queues"]
    assert {"name": "celery", "messages": 0} in queues and len(queues) == 6
    broker_page = flower.get("/broker")
    assert broker_page.status_code == 200 and "celery.bulk.braze" in broker_page.text

    # What Flower shows holds no person and no credential of the worker's.
    shown = page.text + workers.text + flower.get("/api/tasks").text
    assert PERSON not in shown
    assert PASSWORDS["worker"] not in shown

    inspected = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker", "inspect", "stats", "-d", node],
        cwd=REPO_ROOT, env=flower_env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert inspected.returncode == 0, inspected.stdout + inspected.stderr
    assert node in inspected.stdout and "total" in inspected.stdout

    # Steering is refused by the worker: each command answered with an error, nothing done.
    flower_url = flower_env["PREFSYNC_REDIS_URL"]
    for command, arguments in STEERING.items():
        replies = broadcast(flower_url, command, arguments)
        assert replies and all("error" in reply[node] for reply in replies), (command, replies)
        assert "PREFSYNC_WORKER_REMOTE_CONTROL" in replies[0][node]["error"]
    assert worker.running
    # The live queue is still consumed. A task inspection lists (as Flower's worker page
    # does) shows its summary, not its events: here one held up by a slow Braze.
    fake_destinations.set_delay("braze", 1.5)
    enqueue(2)
    (active,) = wait_until(
        lambda: [r for r in broadcast(flower_url, "active", {"safe": False}) if r[node]],
        timeout=10,
    )
    assert active[node][0]["args"] and PERSON not in json.dumps(active)
    fake_destinations.set_delay("braze", 0)
    wait_until(lambda: len(braze_attributes(fake_destinations.calls("braze"))) == 2, timeout=15)

    # Flower as shipped (--enable_events=False) sends nothing the worker refuses.
    assert '"command": "enable_events"' not in worker.log()
    assert "Traceback" not in worker.log()
    assert "NOPERM" not in flower.log() + worker.log()

    # Message bodies are Redis's to refuse: a queue's length, never its messages.
    as_flower = client_of(acl_redis, "flower")
    assert as_flower.llen("celery") == 0
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_flower.lrange("celery", 0, -1)
    with pytest.raises(redis.exceptions.NoPermissionError):
        as_flower.lindex("celery", 0)


def test_a_worker_obeys_control_commands_when_the_operator_opts_in(prefsync_env, start_worker):
    worker = start_worker(prefsync_env, extra_env={"PREFSYNC_WORKER_REMOTE_CONTROL": "true"})
    node = f"{worker.name}@{socket.gethostname()}"
    (reply,) = broadcast(prefsync_env["PREFSYNC_REDIS_URL"], "cancel_consumer", {"queue": "celery"})
    assert "ok" in reply[node], reply
    (queues,) = broadcast(prefsync_env["PREFSYNC_REDIS_URL"], "active_queues", {})
    assert "celery" not in {queue["name"] for queue in queues[node]}


def test_a_control_reply_goes_only_to_the_asking_reply_queue(acl_redis, prefsync_env, start_worker):
    """With Flower's credential, an attacker names where the worker's reply goes: another
    exchange (the anonymous one: any list), or a binding of the reply exchange to a list of
    prefsync's. The worker replies to the asking reply queue only, or not at all."""
    start_worker(env_of(prefsync_env, acl_redis, "worker"), concurrency=1)
    flower_url = env_of(prefsync_env, acl_redis, "flower")["PREFSYNC_REDIS_URL"]
    flower = client_of(acl_redis, "flower")
    admin = client_of(acl_redis, "admin")
    target = "prefsync:bulk:acme"
    # A binding of the reply exchange whose queue is prefsync's list.
    flower.sadd("_kombu.binding.reply.celery.pidbox", f"stolen\x06\x16\x06\x16{target}")

    client = Celery(broker=flower_url)
    client.conf.control_queue_expires = None
    try:
        with client.connection_for_write() as connection:
            mailbox = client.control.mailbox(connection)
            channel = connection.default_channel
            for exchange, routing_key in (("reply.celery.pidbox", "stolen"), ("", target)):
                # A ping as an attacker writes it: a reply_to of its choosing.
                message = {
                    "method": "ping",
                    "arguments": {},
                    "destination": None,
                    "pattern": None,
                    "matcher": None,
                    "ticket": "t-2",
                    "reply_to": {"exchange": exchange, "routing_key": routing_key},
                }
                with mailbox.producer_or_acquire(None, channel) as producer:
                    producer.publish(
                        message,
                        exchange=mailbox.exchange.name,
                        declare=[mailbox.exchange],
                        headers={"clock": 1, "expires": 0},
                        serializer="json",
                    )
    finally:
        client.close()

    time.sleep(3)  # the worker answers a ping within milliseconds
    assert admin.llen(target) == 0
