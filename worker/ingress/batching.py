"""Enqueueing the events of concurrent requests together, from one thread.

Enqueueing costs two Redis round trips a message (the outbox write, then the publish),
whether the message carries one event or a hundred. Under load, requests arrive faster than
one round trip: those that wait while a publish is in flight go out together in the next
one. Each request's answer still waits for its own events to be in Redis.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.producer import MAX_BATCH

# Events taken for one round of publishing: enough messages to drain a burst, few enough
# that the first request of the round is not kept waiting long.
ROUND = 10 * MAX_BATCH
# How long a round waits for more requests after its first. A round costs about 1 ms of
# CPU whether it carries one event or twenty (Celery builds and sends a message, and its
# task-sent event, and the outbox write), all of it holding the GIL the event loop needs:
# at 1,000 webhooks/s, 2 ms gathers a few per round instead of one or two.
LINGER = 0.002


@dataclass(slots=True)
class _Pending:
    payloads: list[Any]
    future: asyncio.Future[list[str]]
    loop: asyncio.AbstractEventLoop


class BatchingEnqueuer:
    """``await enqueue(payloads)`` returns the task id of each payload's message once it is
    in Redis, or raises what the enqueue function raised for the round it was part of."""

    def __init__(
        self, enqueue_many: Callable[[list[Any]], list[str]], linger: float = LINGER
    ) -> None:
        self._enqueue_many = enqueue_many
        self.linger = linger
        self._waiting: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="enqueuer", daemon=True)
        self._thread.start()

    async def enqueue(self, payloads: list[Any]) -> list[str]:
        loop = asyncio.get_running_loop()
        pending = _Pending(payloads, loop.create_future(), loop)
        self._waiting.put(pending)
        return await pending.future

    def close(self) -> None:
        self._waiting.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            taken, size = [first], len(first.payloads)
            deadline = time.monotonic() + self.linger
            while size < ROUND:
                try:
                    more = self._waiting.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._waiting.put(None)  # stop after this round
                    break
                taken.append(more)
                size += len(more.payloads)
            self._publish(taken)

    def _publish(self, taken: list[_Pending]) -> None:
        payloads = [payload for pending in taken for payload in pending.payloads]
        try:
            task_ids = self._enqueue_many(payloads)
        except BaseException as exc:  # every request of the round learns it, the thread goes on
            # A message of the round may have gone through before the failure: its events
            # are answered with an error too, and the copies the PMP sends again are
            # skipped as duplicates. Never a 2xx for what may not be stored.
            for pending in taken:
                pending.loop.call_soon_threadsafe(_fail, pending.future, exc)
            return
        start = 0
        for pending in taken:
            ids = [task_ids[(start + i) // MAX_BATCH] for i in range(len(pending.payloads))]
            start += len(pending.payloads)
            pending.loop.call_soon_threadsafe(_succeed, pending.future, ids)


def _succeed(future: asyncio.Future[list[str]], ids: list[str]) -> None:
    if not future.done():  # the client may have gone away
        future.set_result(ids)


def _fail(future: asyncio.Future[list[str]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
