"""The prefsync worker app with a poisoned Braze connector, for test_poison.py.

Started as ``celery -A tests.e2e.poisoned worker``: for two users the connector misbehaves
the way a bug or an unforeseen payload would make it — one raises an exception nothing
expects, the other hangs and ignores the soft time limit — and for everyone else it is the
real connector.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from celery.exceptions import SoftTimeLimitExceeded

from worker import app
from worker.connectors.base import Result, Transport, Value
from worker.connectors.braze import BrazeConnector

RAISES = "poison-raises"
HANGS = "poison-hangs"

_real_deliver = BrazeConnector.deliver


def _poisoned_deliver(
    self: BrazeConnector,
    transport: Transport,
    config: object,
    user: str,
    values: Mapping[str, Value],
) -> Result:
    if user == RAISES:
        raise ZeroDivisionError(f"poisoned connector cannot handle {sorted(values)}")
    if user == HANGS:
        while True:
            try:
                time.sleep(60)
            except SoftTimeLimitExceeded:
                continue  # stuck for good: only the hard time limit ends this
    return _real_deliver(self, transport, config, user, values)  # type: ignore[arg-type]


BrazeConnector.deliver = _poisoned_deliver  # type: ignore[method-assign]

__all__ = ["app"]
