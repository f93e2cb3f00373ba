"""The worker's main process and a lost broker connection: it survives settling the messages
of the old connection and registering its pool again, and it reconnects soon after Redis
is back.

When the broker connection drops, Celery collects it (which detaches kombu's transport
from it) and connects anew, but the messages taken by the old connection are still
acknowledged, rejected (put back) or restored through their old Redis channel. kombu 5.7
then builds a Redis client from the detached transport and raises AttributeError
(``'NoneType' object has no attribute 'hostname'`` or ``... 'client'``, in
``kombu.transport.redis.Channel._connparams``), which Celery does not expect there: the
main process dies (``Unrecoverable error``). Seen in the soak (tests/e2e/soak.py) as the
channel closed (restore of unacknowledged messages) and as a task put its message back
after the reconnect; related upstream: celery/celery#9250.

So such a channel uses a client of our own (``worker.delivery.runtime``: the same Redis, the same
database) instead. kombu keeps unacknowledged messages in Redis under keys every channel
shares, so an acknowledgement or a put-back through it does what the old channel would
have: a task cut off by the outage is put back as soon as Redis is back, rather than an
hour later when the visibility timeout hands it out again. With Redis still down, it fails
as a lost connection (redis-py's ConnectionError), which Celery logs and goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from celery import bootsteps
from celery.concurrency.asynpool import AsynPool
from kombu.transport import redis as kombu_redis

from worker.delivery.runtime import runtime


def closed_channels_use_our_connection() -> None:
    acquire = kombu_redis.Channel.conn_or_acquire
    if getattr(acquire, "checks_connection", False):
        return

    @contextmanager
    def conn_or_acquire(channel: Any, client: Any = None) -> Iterator[Any]:
        if not client and getattr(channel.connection, "client", None) is None:
            client = runtime().redis
        with acquire(channel, client) as acquired:
            yield acquired

    conn_or_acquire.checks_connection = True  # type: ignore[attr-defined]
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]


def exited_pool_processes_not_watched() -> None:
    """After a reconnect Celery registers the pool with its event loop again, and watches
    every pool process for its exit. A process that had exited (its watch already removed,
    ``_sentinel_poll`` set to None) but was not yet replaced is watched again with no file
    descriptor: kombu raises ValueError (celery/kombu#2623), which celery 5.7's asynpool
    does not catch (it expects AttributeError), and the main process dies (``Unrecoverable
    error: ValueError('file descriptor is None')``; once in 50 faults under a 44,000-event
    backlog in the soak). There is nothing left to watch: skip it; the pool replaces it."""
    track = AsynPool._track_child_process
    if getattr(track, "skips_exited", False):
        return

    def track_child_process(pool: AsynPool, process: Any, hub: Any) -> None:
        if getattr(process, "_sentinel_poll", 0) is None:
            return
        track(pool, process, hub)

    track_child_process.skips_exited = True  # type: ignore[attr-defined]
    AsynPool._track_child_process = track_child_process  # type: ignore[method-assign]


# Celery tries to reconnect at 0, 2, 6, 12, 20, 30, 42, 56… s after the loss (kombu's
# defaults: start 2 s, step 2 s, up to 30 s apart), so the worker came back up to 8 s after
# a 10 s outage, and up to 30 s after a long one. Every second and a half at most instead:
# each try is a refused connection, cheap for both sides.
RECONNECT_INTERVALS = {"interval_start": 0.5, "interval_step": 0.5, "interval_max": 1.5}


class QuickReconnect(bootsteps.StartStopStep):
    """The worker's consumer reconnects to Redis at RECONNECT_INTERVALS."""

    requires = {"celery.worker.components:Timer"}

    def start(self, worker: Any) -> None:
        consumer = getattr(worker, "consumer", None)
        if consumer is None:
            return
        ensure_connected = consumer.ensure_connected

        def quickly(connection: Any) -> Any:
            connection.ensure_connection = partial(
                connection.ensure_connection, **RECONNECT_INTERVALS
            )
            return ensure_connected(connection)

        consumer.ensure_connected = quickly
