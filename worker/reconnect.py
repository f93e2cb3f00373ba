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

So such a channel raises a Redis ConnectionError instead, which Celery and kombu handle as
the lost connection it is: they log it and go on. The message stays unacknowledged in
Redis, and is handed out again after the visibility timeout (or published again by the
outbox), as when Redis is down at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


def closed_channels_raise_connection_errors() -> None:
    acquire = kombu_redis.Channel.conn_or_acquire
    if getattr(acquire, "checks_connection", False):
        return

    @contextmanager
    def conn_or_acquire(channel: Any, client: Any = None) -> Iterator[Any]:
        if not client and getattr(channel.connection, "client", None) is None:
            raise redis.exceptions.ConnectionError(
                "the broker connection this message came by is closed"
            )
        with acquire(channel, client) as acquired:
            yield acquired

    conn_or_acquire.checks_connection = True  # type: ignore[attr-defined]
    kombu_redis.Channel.conn_or_acquire = conn_or_acquire  # type: ignore[method-assign]
