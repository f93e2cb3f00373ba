"""The prefsync worker app whose main process can be made to hang, for test_liveness.py.

Started as ``celery -A tests.e2e.stallable worker``: SIGUSR2 to the main process blocks its
event loop for good (the handler runs on the main thread and never returns), as the
corrupted-pipe read of issue 18 did. Everything else is the real worker.
"""

from __future__ import annotations

import signal
import time

from celery import signals

from worker.queue.app import app


def _hang(signum: int, frame: object) -> None:
    while True:
        time.sleep(60)


@signals.worker_ready.connect
def _stall_on_sigusr2(**_: object) -> None:
    signal.signal(signal.SIGUSR2, _hang)


__all__ = ["app"]
