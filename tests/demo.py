"""``make demo``: the whole pipeline on this machine, no Docker, nothing to set up by hand.

Runs ``python -m tests.demo`` from the repository root. It starts its own redis-server on a
free port (data in a temporary directory; a Redis on 6379 is never touched), the fake
Braze/Brevo of ``tests/fakes/destinations.py`` in a thread, and one Celery worker allowed to
talk to that fake. Through the real CLI it stores the example connector configs for tenant
``acme`` (the Braze ``server`` pointed at the fake, placeholder keys kept), starts the HTTP
ingress (``prefsync serve``) and creates an ingress credential, fetches a token with it and
POSTs the two example events to ``/webhooks``, one after the other, as the PMP would. It
then prints what each destination received, ``prefsync audit acme`` and ``prefsync stats
--tenant acme``.

Everything it started is stopped on the way out, also after an error or Ctrl+C. Exit 0 on
success, 1 with a one-line reason (and the worker log tail when it matters) otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

import requests

from tests.e2e.helpers import EXAMPLES, example
from tests.fakes.destinations import FakeDestinations
from tests.processes import (
    Process,
    RedisServer,
    run_cli,
    start_ingress,
    start_redis,
    start_worker,
    tail,
    wait_until,
    worker_command,
)

TENANT = "acme"
EVENTS = ("event-created.json", "user-updated.json")
TIMEOUT = 30.0  # seconds for the deliveries, in total


Stoppable = TypeVar("Stoppable", Process, RedisServer)


def started(processes: list[Process | RedisServer], name: str, process: Stoppable) -> Stoppable:
    """Keep ``process`` to stop on the way out, and say so."""
    processes.append(process)
    print(f"started {name} pid {process.pid}")
    return process


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    """Run ``python -m worker.cli ARGS``; its stdout, or RuntimeError with its stderr."""
    done = run_cli(env, *args, input=stdin)
    if done.returncode != 0:
        raise RuntimeError(f"prefsync {' '.join(args)} failed:\n{done.stderr.strip()}")
    return done.stdout


def store_configs(env: dict[str, str], fake: FakeDestinations) -> None:
    braze = example("connectors", "braze.json")
    braze["authentication"]["server"] = fake.url  # keep the placeholder key
    brevo = example("connectors", "sendinblue.json")
    for config in (braze, brevo):
        print(cli(env, "connectors", "put", TENANT, "-", stdin=json.dumps(config)), end="")


def received(fake: FakeDestinations) -> str:
    """The calls the fake answered so far: ``service METHOD path -> status``, ``; `` between."""
    calls = [f"{c.service} {c.method} {c.path} -> {c.status}" for c in fake.calls()]
    return "; ".join(calls) or "none"


def pmp_token(env: dict[str, str], url: str) -> str:
    """What a PMP is given (a client id and secret) and does with it (fetch a token)."""
    created = json.loads(cli(env, "ingress", "add", TENANT, "--json"))
    print(
        f"$ prefsync ingress add {TENANT}  -> client id {created['client_id']} (secret not shown)"
    )
    answer = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(created["client_id"], created["client_secret"]),
        timeout=10,
    )
    if answer.status_code != 200:
        raise RuntimeError(f"POST /oauth/token answered {answer.status_code}: {answer.text}")
    print(f"POST /oauth/token  -> {answer.status_code} (a Bearer token for {TENANT})")
    return answer.json()["access_token"]


def deliver_examples(
    env: dict[str, str], fake: FakeDestinations, worker_log: Path, url: str, token: str
) -> None:
    """POST each example event to the ingress, as the PMP would, and wait until both
    destinations accepted it."""
    deadline = time.monotonic() + TIMEOUT

    def accepted(service: str) -> int:
        return sum(call.status < 300 for call in fake.calls(service))

    for number, name in enumerate(EVENTS, start=1):
        answer = requests.post(
            f"{url}/webhooks",
            data=(EXAMPLES / "events" / name).read_bytes(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            timeout=30,
        )
        print(f"POST /webhooks {name}  -> {answer.status_code}")
        if answer.status_code != 202:
            raise RuntimeError(f"the ingress refused {name}: {answer.text}")
        wait_until(
            lambda n=number: accepted("braze") >= n and accepted("brevo") >= n,
            timeout=max(0.0, deadline - time.monotonic()),
            message=lambda n=name: (
                f"{n} did not reach both destinations. calls received: {received(fake)}\n"
                f"worker log:\n{tail(worker_log)}"
            ),
        )
    wait_until(  # the audit entry is written just after the destination answered
        lambda: "delivered\t4" in cli(env, "stats", "--tenant", TENANT).splitlines(),
        timeout=max(1.0, deadline - time.monotonic()),
        interval=0.2,
        message=lambda: f"4 deliveries not recorded:\n{cli(env, 'stats', '--tenant', TENANT)}",
    )


def show_calls(fake: FakeDestinations) -> None:
    for service, title in (("braze", "Braze"), ("brevo", "Brevo")):
        print(f"\n{title} received:")
        for call in fake.calls(service):
            query = f"?{urlencode(call.query)}" if call.query else ""
            print(f"  {call.method} {call.path}{query}  -> {call.status}")
            print("    " + json.dumps(call.body, indent=2).replace("\n", "\n    "))


def run(workdir: Path) -> None:
    processes: list[Process | RedisServer] = []
    try:
        redis = started(processes, "redis-server", start_redis(workdir))
        with FakeDestinations() as fake:
            print(f"fake Braze on {fake.url}, fake Brevo on {fake.url}/v3")
            env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
            env.update(
                PREFSYNC_REDIS_URL=redis.url,
                PREFSYNC_ALLOW_HOSTS=fake.host_port,
                PREFSYNC_SENDINBLUE_API_URL=f"{fake.url}/v3",
                PREFSYNC_LOG_FORMAT="json",
                # The demo seals its configs with this machine's development key.
                PREFSYNC_ALLOW_DEV_KEY="1",
                PYTHONUNBUFFERED="1",
            )
            # As a deployment does before its workers start (docs/security.md).
            print(cli(env, "redis-acl", "--load-functions"), end="")
            worker_log = workdir / "worker.log"
            worker = start_worker("worker", worker_command(), env, worker_log, TIMEOUT)
            started(processes, "worker", worker)
            store_configs(env, fake)
            ingress = start_ingress(env, workdir / "ingress.log", timeout=TIMEOUT)
            started(processes, "ingress", ingress)
            url = ingress.url
            print(f"ingress on {url}")
            deliver_examples(env, fake, worker_log, url, pmp_token(env, url))
            show_calls(fake)
            print(f"\n$ prefsync audit {TENANT}\n{cli(env, 'audit', TENANT)}", end="")
            print(f"\n$ prefsync stats --tenant {TENANT}\n{cli(env, 'stats', '--tenant', TENANT)}")
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl+C must not leak them
            signal.signal(signum, signal.SIG_IGN)
        for process in reversed(processes):  # the ingress, the worker, then redis-server
            process.stop()
        print("stopped the ingress, the worker, the fake destinations and redis-server")


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up as on Ctrl+C
    try:
        with tempfile.TemporaryDirectory(prefix="prefsync-demo-") as workdir:
            run(Path(workdir))
    except KeyboardInterrupt:
        print("demo interrupted", file=sys.stderr)
        return 130
    except (AssertionError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
