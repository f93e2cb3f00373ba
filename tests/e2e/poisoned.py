"""The prefsync worker app with a poisoned Braze connector, for test_poison.py.

Started as ``celery -A tests.e2e.poisoned worker``: for two users the connector misbehaves
the way a bug or an unforeseen payload would make it — one raises an exception nothing
expects, the other hangs and ignores the soft time limit — and so does every batch that
carries one of them; for everyone else it is the real connector.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from celery.exceptions import SoftTimeLimitExceeded

from worker.connectors.base import Answer, Change, Transport
from worker.connectors.braze import BrazeConnector
from worker.queue.app import app

RAISES = "poison-raises"
HANGS = "poison-hangs"

_real_deliver_many = BrazeConnector.deliver_many


def _poisoned_deliver_many(
    self: BrazeConnector, transport: Transport, config: object, changes: Sequence[Change]
) -> list[Answer]:
    users = {change.user for change in changes}
    if RAISES in users:
        raise ZeroDivisionError(f"poisoned connector cannot handle {sorted(users)[:3]}")
    if HANGS in users:
        while True:
            try:
                time.sleep(60)
            except SoftTimeLimitExceeded:
                continue  # stuck for good: only the hard time limit ends this
    return _real_deliver_many(self, transport, config, changes)  # type: ignore[arg-type]


BrazeConnector.deliver_many = _poisoned_deliver_many  # type: ignore[method-assign]

__all__ = ["app"]
