"""What Redis retains per person and per event: ``python -m bench.memory [--events N]
[--people N]``.

Delivers N single-person Braze events (bench.events, two properties each) spread over
the people, in batches of 100 as the worker receives them, through ``Deliverer.deliver``
in this process against a fake transport that answers every call with Braze's success:
no Celery, no HTTP, nothing but what the delivery itself keeps in Redis. The redis-server
is a throwaway one on a free port. Then it reports ``INFO memory`` and ``MEMORY USAGE``
of each kind of key, per person and per event.

What one delivered event leaves behind besides the person's record: its audit entry
(bounded by ``PREFSYNC_AUDIT_MAXLEN``, reported apart) and the counters (constant).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
import requests

from bench.events import EventFactory, braze_config
from tests.processes import start_redis
from worker.connectors.base import Transport
from worker.connectors.config import parse_config
from worker.core.events import parse_event
from worker.delivery.runtime import Runtime
from worker.infra.logging import configure
from worker.infra.settings import Settings

TENANT = "bench-memory"
SERVER = "http://fake.invalid:1"


class Accepting(requests.Session):
    """Braze's answer to every call: success, without a network."""

    def request(self, method: str | bytes, url: str | bytes, *_: Any, **__: Any) -> Any:
        response = requests.Response()
        response.status_code = 201
        response.headers["Content-Type"] = "application/json"
        response._content = b'{"message": "success"}'
        return response


def kind_of(name: bytes) -> str:
    """``prefsync:person:[...]`` -> ``prefsync:person``."""
    return ":".join(name.decode().split(":")[:2])


def usage(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per kind of key: how many, and their MEMORY USAGE summed."""
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for name in client.scan_iter(count=1000):
        kind = kind_of(name)
        counts[kind] += 1
        sizes[kind] += client.memory_usage(name, samples=0) or 0
    return {kind: (counts[kind], sizes[kind]) for kind in counts}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--audit-maxlen", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="prefsync-memory-") as workdir:
        server = start_redis(Path(workdir))
        try:
            run(server.url, args.events, args.people, args.audit_maxlen)
        finally:
            server.stop()


def run(url: str, events: int, people: int, audit_maxlen: int) -> None:
    rt = Runtime(
        Settings(
            redis_url=url,
            allow_hosts=("fake.invalid:1",),
            audit_maxlen=audit_maxlen,
            user_hash_key="bench-memory-hash-key-0123456789abcdef",
        )
    )
    configure(rt.settings, level="WARNING")  # a line per call would be most of the time
    rt.deliverer.transport = Transport(1.0, Accepting())
    config = parse_config(
        {"id": "braze", **braze_config(SERVER)}, allow_hosts=rt.settings.allow_hosts
    )
    rt.configs.put(TENANT, config)
    client = rt.redis
    before = client.info("memory")["used_memory"]
    factory = EventFactory(TENANT, "m", people)
    started = time.monotonic()
    outcomes: Counter[str] = Counter()
    for first in range(0, events, 100):
        batch = [
            parse_event(factory.make(i, time.time()))
            for i in range(first, min(first + 100, events))
        ]
        left = rt.deliverer.deliver(TENANT, batch, config)
        assert not left, left
        if first % 100_000 == 0 and first:
            print(f"{first:,} events, {first / (time.monotonic() - started):,.0f}/s", flush=True)
    seconds = time.monotonic() - started
    outcomes.update(rt.recorder.counts(TENANT))
    after = client.info("memory")["used_memory"]
    kinds = usage(client)
    report(events, people, seconds, before, after, kinds, dict(outcomes), rt)


def report(
    events: int,
    people: int,
    seconds: float,
    before: int,
    after: int,
    kinds: dict[str, tuple[int, int]],
    outcomes: dict[str, Any],
    rt: Runtime,
) -> None:
    print(f"{events:,} events over {people:,} people in {seconds:.0f} s; outcomes {outcomes}")
    print(f"used_memory grew by {after - before:,} B: {(after - before) / events:.1f} B/event")
    print("| keys | count | bytes (MEMORY USAGE) | per person | per event |")
    print("|---|---|---|---|---|")
    for kind, (count, size) in sorted(kinds.items(), key=lambda kv: -kv[1][1]):
        print(f"| `{kind}` | {count:,} | {size:,} | {size / people:,.1f} | {size / events:,.2f} |")
    audit = sum(size for kind, (_, size) in kinds.items() if kind.startswith("prefsync:audit"))
    rest = sum(size for _, size in kinds.values()) - audit
    print(f"without the audit trail: {rest:,} B = {rest / people:,.1f} B/person, ", end="")
    print(f"{rest / events:.3f} B/event")
    held = rt.audit.length(TENANT)
    print(f"the audit trail holds {held:,} outcomes: {audit / max(held, 1):.1f} B each")


if __name__ == "__main__":
    main()
