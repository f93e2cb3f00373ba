"""The Celery app and the settings the delivery guarantee rests on.

Each setting says why it is there; see docs/vendors.md#celery-on-redis and the "Delivery
guarantee" section of docs/delivery.md. Celery + Redis loses messages by default in several ways;
every line below closes one of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from typing import Any

import celery.apps.worker as celery_worker_app
from celery import Celery, signals
from kombu import Exchange, Queue

from worker.delivery.runtime import rate_limits
from worker.infra.logging import configure as configure_logging
from worker.infra.logging import uses_console
from worker.infra.redis_client import SENTINEL_KWARGS
from worker.infra.settings import InvalidSettings, Settings, get_settings
from worker.queue import lanes
from worker.queue.control import RemoteControl, replies_only_to_reply_queues
from worker.queue.liveness import Liveness
from worker.queue.mutex import restore_without_lua
from worker.queue.pool import send_messages_whole, soft_limit_armed
from worker.queue.reconnect import (
    QuickReconnect,
    closed_channels_use_our_connection,
    exited_pool_processes_not_watched,
)


def make_app(settings: Settings) -> Celery:
    closed_channels_use_our_connection()
    replies_only_to_reply_queues()
    restore_without_lua()
    exited_pool_processes_not_watched()
    app = Celery("prefsync", broker=settings.redis_url, include=["worker.queue.tasks"])
    app.conf.update(
        # Acknowledge a message only after its task ran: a crash mid-task re-delivers it.
        task_acks_late=True,
        # A pool child killed mid-task (OOM, SIGKILL) otherwise gets its message acked and
        # lost; this republishes it as a retry instead.
        task_retry_on_worker_lost=True,
        task_reject_on_worker_lost=True,
        # One message at a time per process: a dead worker strands as few as possible. With
        # late acks a running task's message counts too, so a worker holds at most one
        # message per process, running ones included: it cannot hoard a bulk backlog while
        # live messages arrive (docs/delivery.md, "Lanes").
        worker_prefetch_multiplier=1,
        # The lanes (worker.queue.lanes): a queue per lane for routing and per lane and destination
        # type for deliveries. Without -Q a worker consumes them all, in this order.
        task_queues=[Queue(name, Exchange(name), routing_key=name) for name in lanes.queues()],
        task_default_queue=lanes.DEFAULT_QUEUE,
        task_routes=(lanes.route_for,),
        broker_transport_options={
            # A worker consuming several queues takes from the first that has a message
            # (kombu's default, round_robin, would take bulk as often as live).
            "queue_order_strategy": "priority",
            # Unacked messages come back after this long; it must outlast every retry
            # countdown (Settings checks it) or retries would run twice.
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for unacked messages of dead workers every interval (default: every
            # 10 x 10 s); with a short visibility timeout recovery is then quick too.
            "unacked_restore_interval": _restore_interval(settings.visibility_timeout),
            "unacked_restore_throttle": 1,
            # Without socket timeouts a publish can hang forever on a half-open connection.
            "socket_timeout": 10,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 25,
            # With a sentinel:// URL: which master to ask for, and how (redis_client.py).
            "master_name": settings.redis_sentinel_master,
            "sentinel_kwargs": {
                **SENTINEL_KWARGS,
                **({"ssl": True, **settings.tls_options()} if settings.uses_tls else {}),
            },
        },
        # rediss:// (or PREFSYNC_REDIS_TLS with Sentinels): the server's certificate is
        # verified, as for prefsync's own connection (Settings.tls_options).
        broker_use_ssl=settings.tls_options() or None,
        broker_connection_retry_on_startup=True,
        # Reconnect for as long as Redis is away (default: give up after 100 tries, under
        # three minutes at worker.queue.reconnect's pace): a worker that gave up would only be
        # restarted to try again.
        broker_connection_max_retries=None,
        # After a reconnect, tasks still running can no longer ack their old messages, which
        # come back and would run twice: cancel them and let them be re-delivered.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # On shutdown, finish running tasks, then requeue what is held (including retries
        # waiting for their countdown) instead of cold-stopping with them in memory.
        worker_soft_shutdown_timeout=10.0,
        worker_enable_soft_shutdown_on_idle=True,
        # Bound "in flight": the hard limit feeds the visibility-timeout rule; the soft limit
        # fires first so a stuck attempt is retried on schedule rather than dead-lettered.
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=settings.soft_time_limit,
        # Redis blips while enqueueing or while a retry republishes: keep trying for ~10 s,
        # then fail loudly (a producer gets an error, never a silent drop or a hang).
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 10,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2,
        },
        # Outcomes are our own records (stats, dead letters); Flower works from events.
        task_ignore_result=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        # Remote control's queues (ping, inspect) do not expire: kombu keeps expiring ones'
        # bindings alive with Lua (EVALSHA), which the worker's Redis user may not run.
        control_queue_expires=None,
        # Nor do the queues of an events receiver (Flower): fanout messages travel by
        # pub/sub, so a receiver gone leaves only its binding in kombu's table.
        event_queue_expires=None,
        # Never pickle: a message is data, not code.
        task_serializer="json",
        accept_content=["json"],
        # Our structlog pipeline owns logging (worker.infra.logging).
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
    )
    # A main process that stops consuming is seen, and exits to be restarted.
    app.steps["worker"].add(Liveness)
    # Back soon after Redis is (worker.queue.reconnect).
    app.steps["worker"].add(QuickReconnect)
    # Inspection answered, control commands refused unless opted in (worker.queue.control).
    app.steps["consumer"].add(RemoteControl)
    return app


def _restore_interval(visibility_timeout: int) -> int:
    return max(1, min(10, visibility_timeout // 10))


@signals.celeryd_init.connect
@signals.setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: object) -> None:
    # setup_logging: connecting keeps Celery from installing its own handlers; it passes
    # the worker's --loglevel. celeryd_init: comes before the worker's first warnings
    # (running as root, say), so they are JSON lines too.
    settings = get_settings()
    configure_logging(settings, level=loglevel)
    if not uses_console(settings):
        celery_worker_app.safe_say = _say_as_json


@signals.worker_process_init.connect
def _send_messages_whole(**_: object) -> None:
    # A result cut in two by a signal corrupts the pipe to the main process (worker.queue.pool).
    send_messages_whole()


@signals.task_prerun.connect
def _arm_soft_limit(**_: object) -> None:
    # The soft time limit is ignored between tasks in a pool process (worker.queue.pool).
    soft_limit_armed()


try:
    app = make_app(get_settings())
    rate_limits(get_settings().rate_limits)  # a worker with an unknown name must not start
except InvalidSettings as exc:
    # One line, no traceback: a setting to fix, not a bug (`celery worker` imports this).
    # Exit code 2, as the CLI's "could not run".
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)


def _say_as_json(message: str, *_: Any, **__: Any) -> None:
    # Celery prints its shutdown notices straight to the terminal from signal handlers.
    # A write of one finished line is as safe there, and keeps the output all JSON.
    event = {"event": message.strip(), "level": "warning", "logger": "celery.apps.worker"}
    with contextlib.suppress(OSError):
        os.write(sys.__stderr__.fileno(), (json.dumps(event) + "\n").encode())
