"""Backfill: start a tool from the PMP's truth (docs/two-way-consent.md#backfill).

Every user the PMP holds (its users API, page by page) or an export file holds (JSON
lines, gzip or not) becomes one full-state change on the bulk lane, dated at the user's
``updated_at``, through the producer like any other event. Newest wins and repeats are
duplicates for the reasons every event's are (worker.records.state): a backfill is no
special case for the worker.

A full state is a ``user.updated`` whose ``old_entity`` holds no consents: every value the
user has is then a change, and sent, where a webhook's ``user.updated`` sends only what
differs from its ``old_entity``. Its event key is the live webhook's for the same state
(the user's ``id`` and ``updated_at``), so a second run, or a state the webhook carried
already, is told nothing again.

Where a run is (the PMP's cursor, or the file's offset in lines) is written in Redis after
each page is enqueued, so ``--resume`` continues after the last page that went; a page
enqueued twice (a run stopped between the two) is skipped by the worker as duplicates.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from worker.core.errors import InvalidEvent
from worker.producer import enqueue_many, validate

if TYPE_CHECKING:
    from redis import Redis

    from worker.connectors.pmp import PmpClient, PmpCredentials

#: a hash per tenant: the source ("pmp", or "file:" and its path) -> where to resume
POSITION_KEY = "prefsync:backfill:{tenant}"
#: lines of an export file enqueued together, and saved as one position
FILE_PAGE = 100
#: at most this many refusals are named one by one; the others are only counted
_NAMED_REFUSALS = 20


@dataclass(frozen=True, slots=True)
class Page:
    """Users read together, and where the next read starts (None: there is no more)."""

    users: list[Any]
    next_position: str | None


@dataclass(slots=True)
class Progress:
    """How a run went: users read, enqueued as changes, refused (each with why)."""

    read: int = 0
    enqueued: int = 0
    refused: int = 0
    resumed_from: str | None = None
    started: float = field(default_factory=time.monotonic)
    #: the first refusals, "user N: why" (the position in the run, never a person's id)
    refusals: list[str] = field(default_factory=list)
    #: how many users the source holds, when it says so (a file's lines)
    total: int | None = None

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Users read per second."""
        return self.read / self.elapsed if self.elapsed > 0 else 0.0

    def eta(self) -> float | None:
        if self.total is None or not self.rate:
            return None
        return max(self.total - self.read, 0) / self.rate

    def summary(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "enqueued": self.enqueued,
            "refused": self.refused,
            "refusals": self.refusals,
            "resumed_from": self.resumed_from,
            "seconds": round(self.elapsed, 3),
            "users_per_second": round(self.rate, 1),
        }


def full_state(tenant: str, user: Any) -> dict[str, Any]:
    """The change that tells a user's whole status: a ``user.updated`` whose old entity has
    no consents. The user's own fields stay as the PMP gives them, the tenant added as
    ``organization_id`` (the PMP's users API leaves it out; a user naming another is
    refused); the entity's ``id`` is the user's, else their ``organization_user_id``."""
    if not isinstance(user, dict):
        raise InvalidEvent(f"a user must be a JSON object, not {type(user).__name__}")
    if user.get("organization_id", tenant) != tenant:
        # An export of another organization would write its people into this tenant.
        raise InvalidEvent("organization_id: not this tenant's")
    entity = {**user, "organization_id": tenant}
    entity.setdefault("id", user.get("organization_user_id"))
    before = {
        key: entity[key]
        for key in ("id", "organization_id", "organization_user_id", "updated_at", "created_at")
        if key in entity
    }
    return {"type": "user.updated", "parameters": {"old_entity": before, "new_entity": entity}}


def pmp_pages(client: PmpClient, credentials: PmpCredentials, cursor: str | None) -> Iterator[Page]:
    """The PMP's users, a page at a time, from ``cursor`` (None: the first page)."""
    while True:
        page = client.users_page(credentials, cursor=cursor)
        yield Page(page.users, page.cursor)
        if page.cursor is None:
            return
        cursor = page.cursor


def file_pages(path: Path, start: str | None) -> Iterator[Page]:
    """An export file's users, ``FILE_PAGE`` lines at a time, after line ``start``; gzip
    when it starts with gzip's magic bytes. A line that is not JSON is a refused user."""
    skip = int(start or 0)
    users: list[Any] = []
    with _open_text(path) as lines:
        for number, line in enumerate(lines, start=1):
            if number <= skip or not line.strip():
                continue
            try:
                users.append(json.loads(line))
            except json.JSONDecodeError as exc:
                users.append(InvalidEvent(f"line {number}: not JSON ({exc.msg})"))
            if len(users) == FILE_PAGE:
                yield Page(users, str(number))
                users = []
    yield Page(users, None)


def count_lines(path: Path) -> int:
    """The users an export file holds, for the ETA (one a non-empty line)."""
    with _open_text(path) as lines:
        return sum(1 for line in lines if line.strip())


def _open_text(path: Path) -> IO[str]:
    with path.open("rb") as head:
        compressed = head.read(2) == b"\x1f\x8b"  # gzip's magic bytes
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


class Positions:
    """Where each backfill of a tenant is, in Redis."""

    def __init__(self, redis: Redis, tenant: str) -> None:
        self.redis = redis
        self.key = POSITION_KEY.format(tenant=tenant)

    def get(self, source: str) -> str | None:
        raw = self.redis.hget(self.key, source)
        return raw.decode() if isinstance(raw, bytes) else raw

    def set(self, source: str, position: str | None) -> None:
        """Keep ``position``; None (the run ended) forgets it: the next run starts over."""
        if position is None:
            self.redis.hdel(self.key, source)
        else:
            self.redis.hset(self.key, source, position)


def backfill(
    tenant: str,
    pages: Callable[[str | None], Iterator[Page]],
    positions: Positions,
    source: str,
    *,
    connectors: Sequence[str] | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_page: Callable[[Progress], None] = lambda _: None,
) -> Progress:
    """Enqueue every user of ``pages`` for ``connectors`` (None: all of the tenant's), page
    by page, keeping the position after each; from the kept position when ``resume``.
    ``BrokerUnavailable`` and the source's errors stop it: what went before is kept."""
    progress = progress or Progress()
    start = positions.get(source) if resume else None
    progress.resumed_from = start
    for page in pages(start):
        numbered = []  # (the user's number in the run, their change)
        for user in page.users:
            progress.read += 1
            try:
                if isinstance(user, InvalidEvent):
                    raise user
                numbered.append((progress.read, full_state(tenant, user)))
            except InvalidEvent as exc:
                _refuse(progress, progress.read, str(exc))
        progress.enqueued += _enqueue(numbered, connectors, progress)
        positions.set(source, page.next_position)
        on_page(progress)
    return progress


def _enqueue(
    numbered: list[tuple[int, dict[str, Any]]],
    connectors: Sequence[str] | None,
    progress: Progress,
) -> int:
    """Enqueue a page's changes; how many went. The producer validates them: only when it
    refuses one is each validated on its own, to refuse that one and send the others."""
    if not numbered:
        return 0
    payloads = [payload for _, payload in numbered]
    try:
        enqueue_many(payloads, bulk=True, connectors=connectors)
        return len(payloads)
    except InvalidEvent:
        pass
    valid = []
    for number, payload in numbered:
        try:
            validate(payload)
            valid.append(payload)
        except InvalidEvent as exc:
            _refuse(progress, number, str(exc))
    if valid:
        enqueue_many(valid, bulk=True, connectors=connectors)
    return len(valid)


def _refuse(progress: Progress, number: int, why: str) -> None:
    progress.refused += 1
    if len(progress.refusals) < _NAMED_REFUSALS:
        progress.refusals.append(f"user {number}: {why}")
