"""Concurrent webhook requests enqueued together (worker.ingress.batching), each with its
own task id."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.ingress.batching import BatchingEnqueuer
from worker.producer import MAX_BATCH


def test_concurrent_requests_are_enqueued_together_and_each_gets_its_own_task_id() -> None:
    # Given an enqueue that takes a while, as a Redis round trip does,
    calls: list[int] = []

    def slow_enqueue(payloads: list[Any]) -> list[str]:
        import time

        time.sleep(0.02)
        calls.append(len(payloads))
        start = sum(calls[:-1])
        return [f"m{start + i}" for i in range(0, len(payloads), MAX_BATCH)]

    enqueuer = BatchingEnqueuer(slow_enqueue, linger=0.0)  # what gathers them is the wait

    # when 250 requests of one event each arrive at once,
    async def send_all() -> list[list[str]]:
        return await asyncio.gather(*(enqueuer.enqueue([n]) for n in range(250)))

    try:
        answers = asyncio.run(send_all())
    finally:
        enqueuer.close()

    # then they took far fewer enqueue calls, and each request knows its message.
    assert sum(calls) == 250 and len(calls) < 10
    assert all(len(ids) == 1 for ids in answers)
    assert len({ids[0] for ids in answers}) >= len(calls)


def test_a_round_waits_briefly_for_more_requests_before_it_enqueues() -> None:
    calls: list[int] = []

    def enqueue(payloads: list[Any]) -> list[str]:
        calls.append(len(payloads))
        return ["m"] * len(range(0, len(payloads), MAX_BATCH))

    enqueuer = BatchingEnqueuer(enqueue, linger=0.2)

    async def two_requests_50_ms_apart() -> None:
        first = asyncio.ensure_future(enqueuer.enqueue([1]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, enqueuer.enqueue([2]))

    try:
        asyncio.run(two_requests_50_ms_apart())
    finally:
        enqueuer.close()

    assert calls == [2]
