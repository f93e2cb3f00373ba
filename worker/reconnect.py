"""The worker's main process survives what it does with messages of a lost connection.

When the broker connection drops, Celery collects it (which detaches kombu's transport
from it) and connects anew, but the messages taken by the old connection are still
acknowledged, rejected (put back) or restored through their old Redis channel. kombu 5.7
then builds a Redis client from the detached transport and raises AttributeError
(``'NoneType' object has no attribute 'hostname'`` or ``... 'client'``, in
``kombu.transport.redis.Channel._connparams``), which Celery does not expect there: the
main process dies (``Unrecoverable error``). Seen in the soak (tests/e2e/soak.py) as the
channel closed (restore of unacknowledged messages) and as a task put its message back
after the reconnect; related upstream: celery/celery#9250.

So such a channel uses a client of our own (``worker.runtime``: the same Redis, the same
database) instead. kombu keeps unacknowledged messages in Redis under keys every channel
shares, so an acknowledgement or a put-back through it does what the old channel would
have: a task cut off by the outage is put back as soon as Redis is back, rather than an
hour later when the visibility timeout hands it out again. With Redis still down, it fails
as a lost connection (redis-py's ConnectionError), which Celery logs and goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

from worker.runtime import runtime


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
