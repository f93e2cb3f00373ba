"""The backfill benchmark: ``python -m bench.backfill [--users N]``.

A backfill (worker.backfill) of N users (default 100,000) from the fake PMP, in its pages
of 100, into a throwaway redis-server: users read and enqueued a second, and the part of
the time spent waiting for the PMP's pages. It measures the producer's side only (reading,
validating, parking on the bulk lane); the destinations' pace is docs/onboarding.md's.

The fake runs in this process (a thread), sharing its interpreter with the backfill: the
figures are a floor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fake import BenchFake, FakeThread
from tests.fakes.vendors import Answer
from tests.processes import start_redis

TENANT = "bench"


class SortedPmp(BenchFake):
    """The fake PMP with its users' order computed once: the fake sorts them for every
    page, which at 100,000 users would be what is measured."""

    def __init__(self) -> None:
        super().__init__()
        self._ordered: list[dict[str, Any]] = []

    def seed(self, count: int) -> None:
        for number in range(count):
            self.add_pmp_user(
                {
                    "id": f"pmp-{number}",
                    "organization_user_id": f"user-{number:07d}",
                    "updated_at": "2026-11-01T10:00:00.000Z",
                    "version": 3,
                    "consents": {"purposes": [{"id": "newsletter", "enabled": number % 2 == 0}]},
                }
            )
        self._ordered = sorted(
            self._pmp_users.values(), key=lambda user: user["organization_user_id"]
        )

    def _pmp_users_page(self, query: dict[str, str]) -> Answer:
        start = int(query.get("$cursor") or 0)
        page = self._ordered[start : start + self.pmp_page_size]
        more = start + self.pmp_page_size < len(self._ordered)
        cursor = str(start + self.pmp_page_size) if more else None
        return Answer(200, {"data": page, "limit": self.pmp_page_size, "cursor": cursor})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000, help="users the PMP holds")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as workdir:
        redis_server = start_redis(Path(workdir))
        fake = SortedPmp()
        fake.seed(args.users)
        server = FakeThread(fake).start()
        try:
            print(measure(redis_server.url, server.url, args.users))
        finally:
            server.stop()
            redis_server.stop()


def measure(redis_url: str, fake_url: str, users: int) -> str:
    os.environ.update(
        PREFSYNC_REDIS_URL=redis_url,
        PREFSYNC_ALLOW_HOSTS=fake_url.removeprefix("http://"),
        PREFSYNC_ALLOW_DEV_KEY="1",
    )
    # Imported once the settings are in the environment.
    from worker import backfill
    from worker.connectors.pmp import parse_credentials
    from worker.delivery.runtime import runtime

    rt = runtime()
    credentials = parse_credentials(
        {"api_key": "k" * 16, "api_secret": "s" * 16, "api_url": f"{fake_url}/pmp/v1"},
        tenant=TENANT,
        allow_hosts=rt.settings.allow_hosts,
    )
    waited = 0.0

    def pages(cursor: str | None) -> Any:
        nonlocal waited
        source = backfill.pmp_pages(rt.pmp_client, credentials, cursor)
        while True:
            asked = time.perf_counter()
            page = next(source, None)
            waited += time.perf_counter() - asked
            if page is None:
                return
            yield page

    progress = backfill.backfill(TENANT, pages, backfill.Positions(rt.redis, TENANT), "pmp")
    seconds = progress.elapsed
    assert progress.enqueued == users, progress.summary()
    return (
        f"backfill: {users:,} users from the fake PMP (pages of 100) in {seconds:.1f} s: "
        f"{progress.read / seconds:,.0f} users/s read and enqueued on the bulk lane; "
        f"{waited:.1f} s of it waiting for the PMP's pages "
        f"({users / (seconds - waited):,.0f} users/s validated and parked)"
    )


if __name__ == "__main__":
    main()
