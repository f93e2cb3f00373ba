"""Pool processes send each message to the worker's main process whole.

A prefork pool process reports each task's result to the main process as one
length-prefixed pickle on a pipe (billiard's ``_SimpleQueue``). A result bigger than the
pipe's buffer takes several writes, and while the main process is not reading — as when it
reconnects to Redis, seconds at a time — the pool process waits in the middle of it. Two
signals reach it there and raise an exception in the middle of the message: the soft time
limit (SIGUSR1: ``SoftTimeLimitExceeded``, fired by the main process for a task whose
result it has not read yet) and SIGTERM (``SystemExit``: the task cancelled when the broker
connection dropped). billiard then sends a second message (a ``MaybeEncodingError`` for the
same job) after the half-written one. The main process reads the first message's length,
takes the second message's bytes as the rest of it and either fails to unpickle it
(``Unrecoverable error: UnicodeDecodeError`` in ``asynpool._recv_message``: the worker
exits) or reads a garbage length and waits forever for that many bytes (in warm shutdown,
``_flush_outqueue``: the worker hangs). Seen and measured with tests/e2e/soak.py.

So in a pool process both signals are held while a message is written, and SIGTERM is let
through once it is whole. The soft time limit's signal is ignored from then on until the
next task starts: one that came meanwhile, or comes later, was for a task that had already
ended. SIGKILL (the hard time limit) cannot be held and needs no holding: a
killed process writes nothing after its half message, and the main process drops the pipe
of a dead process.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from billiard.pool import SIG_SOFT_TIMEOUT
from billiard.queues import _SimpleQueue

HELD = frozenset({SIG_SOFT_TIMEOUT, signal.SIGTERM})


def send_messages_whole() -> None:
    """In a pool process: every message to the main process is written whole."""
    send = _SimpleQueue.send_payload
    if getattr(send, "whole", False):
        return

    def send_whole(queue: _SimpleQueue, value: bytes) -> None:
        with signals_held():
            send(queue, value)

    send_whole.whole = True  # type: ignore[attr-defined]
    _SimpleQueue.send_payload = send_whole  # type: ignore[method-assign]


# billiard's soft time limit handler, set aside while no task runs (``signals_held``).
_soft_limit_handler: Any = None


@contextmanager
def signals_held() -> Iterator[None]:
    """SIGTERM and the soft time limit's signal held off until the block is done; then
    SIGTERM is let through, and the soft time limit is ignored until the next task starts
    (``soft_limit_armed``): one that came meanwhile, or comes later, is for a task whose
    result is written already, and would otherwise raise in billiard's own code (the pool
    process would die waiting for its next task: celery/celery#2952)."""
    global _soft_limit_handler
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        # Ignoring a pending signal discards it (POSIX).
        handler = signal.signal(SIG_SOFT_TIMEOUT, signal.SIG_IGN)
        if handler not in (signal.SIG_IGN, None):
            _soft_limit_handler = handler
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def soft_limit_armed() -> None:
    """At the start of a task: its soft time limit raises again."""
    if _soft_limit_handler is not None:
        signal.signal(SIG_SOFT_TIMEOUT, _soft_limit_handler)
