"""The worker's main process survives losing its Redis connection.

kombu 5.7 can crash the main process as Celery drops a lost connection: Celery first
collects the connection (which detaches the transport from it), then closes it, and the
Redis channel's close then restores its unacknowledged messages through a connection that
is gone (``Unrecoverable error: AttributeError: 'NoneType' object has no attribute
'hostname'`` in ``kombu.transport.redis.Channel._connparams``; related upstream:
celery/celery#9250). Two worker exits in twelve Redis faults in the soak (tests/e2e/soak.py)
before this was worked around.

Those messages are then left where they are, as when Redis is down at that moment (the
usual case): unacknowledged in Redis, handed out again after the visibility timeout (and
published again by the outbox past their due time).
"""

from __future__ import annotations

from typing import Any

import structlog
from kombu.transport import redis as kombu_redis

log = structlog.get_logger("prefsync.reconnect")


def survive_restore_without_connection() -> None:
    restore = kombu_redis.QoS.restore_unacked
    if getattr(restore, "survives", False):
        return

    def restore_unacked(qos: Any, client: Any = None) -> Any:
        if client is None and getattr(qos.channel.connection, "client", None) is None:
            log.warning(
                "unacknowledged messages left to the visibility timeout: the broker "
                "connection was gone before they could be restored",
                messages=len(qos._delivered),
            )
            return None
        return restore(qos, client)

    restore_unacked.survives = True  # type: ignore[attr-defined]
    kombu_redis.QoS.restore_unacked = restore_unacked  # type: ignore[method-assign]
