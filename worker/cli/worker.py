"""The long-running processes: `prefsync worker`, its health check `worker-health`, and the
HTTP ingress `prefsync serve`."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click
import redis

from worker.cli.common import fail, redis_help
from worker.connectors import CONNECTORS
from worker.infra.settings import get_settings
from worker.queue.lanes import LANES, queues

if TYPE_CHECKING:
    from worker.infra.settings import Settings


def _redis_answers() -> Settings:
    """The settings, once the Redis they name answers (exit 2 with the reason otherwise)."""
    from worker.infra.redis_client import connect, redacted_url

    settings = get_settings()
    try:
        connect(settings, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        fail(redis_help(settings.redis_url, exc))
    # Another Redis on the default port would otherwise be used without a word.
    click.echo(f"Redis at {redacted_url(settings.redis_url)} (PREFSYNC_REDIS_URL)", err=True)
    return settings


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", default=None, help="Worker processes (default: CPUs).")
@click.option("--loglevel", "-l", default=None, help="Log level (default: PREFSYNC_LOG_LEVEL).")
@click.option(
    "--lane",
    "lanes_",
    multiple=True,
    type=click.Choice(LANES),
    help="Consume only this lane's queues (repeatable; default: both).",
)
@click.option(
    "--destination",
    multiple=True,
    type=click.Choice(sorted(CONNECTORS)),
    help="Deliver only to this destination type (repeatable); no routing.",
)
@click.option(
    "--without-destination",
    multiple=True,
    type=click.Choice(sorted(CONNECTORS)),
    help="Everything but deliveries to this destination type (repeatable).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: str | None,
    loglevel: str | None,
    lanes_: tuple[str, ...],
    destination: tuple[str, ...],
    without_destination: tuple[str, ...],
) -> None:
    """Run a worker (same as `celery -A worker worker`); extra options go to Celery.
    Without --lane or --destination it consumes every queue, live before bulk
    (docs/delivery.md, "Lanes")."""
    if destination and without_destination:
        fail("give --destination or --without-destination, not both")
    settings = _redis_answers()
    from worker.infra.logging import uses_console

    # Celery's banner is plain text: leave it out where every line must be JSON.
    quiet = [] if uses_console(settings) else ["--quiet"]
    argv = ["celery", "-A", "worker", *quiet, "worker"]
    argv.append(f"--loglevel={loglevel or settings.log_level}")
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if lanes_ or destination or without_destination:
        chosen = queues(tuple(lane for lane in LANES if lane in lanes_) or LANES,
                        only=destination, without=without_destination)  # fmt: skip
        argv.append(f"--queues={','.join(chosen)}")
    os.execvp(sys.executable, [sys.executable, "-m", *argv, *ctx.args])


@click.command("worker-health")
def worker_health() -> None:
    """Check that the worker on this host is consuming: exits 0 while its heartbeat
    (PREFSYNC_HEARTBEAT_FILE) is fresher than PREFSYNC_LIVENESS_TIMEOUT, 1 otherwise. For
    healthchecks and liveness probes; it needs neither Redis nor Celery."""
    import time
    from pathlib import Path

    from worker.queue.liveness import heartbeat_age

    settings = get_settings()
    path = Path(settings.heartbeat_file)
    age = heartbeat_age(path, time.time())
    if age is None:
        fail(f"no heartbeat in {path}: the worker has not started, or writes elsewhere", 1)
    if age > settings.liveness_timeout:
        fail(
            f"the worker stopped consuming: its last heartbeat is {age:.0f}s old "
            f"(PREFSYNC_LIVENESS_TIMEOUT: {settings.liveness_timeout:g}s)",
            1,
        )
    click.echo(f"ok: heartbeat {age:.1f}s ago")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes (each with its own event loop); one takes thousands of webhooks/s.",
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP ingress the PMP calls: POST /webhooks, POST /oauth/token, GET /healthz,
    /readyz and /metrics (docs/ingress-api.md). Credentials: `prefsync ingress add TENANT`."""
    import uvicorn

    from worker.infra.logging import configure

    settings = _redis_answers()
    configure(settings)
    uvicorn.run(
        "worker.ingress.app:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        # httptools, with the read deadlines and connection limits uvicorn does not set.
        http="worker.ingress.server:GuardedHttpToolsProtocol",
        # X-Forwarded-For is believed only from PREFSYNC_INGRESS_TRUSTED_PROXIES (ours),
        # never from uvicorn's default of any local peer.
        proxy_headers=False,
        server_header=False,
        # An access log line per webhook would cost a fifth of the throughput; /metrics
        # counts the answers.
        access_log=False,
        log_config=None,
        timeout_keep_alive=75,  # longer than the PMP's or a load balancer's idle timeout
    )
