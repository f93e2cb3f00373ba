"""The dead-letter store: deliveries that could not be made, kept for an operator.

Redis has no dead-letter exchange, so this is ours: one hash of entries (compact JSON,
zlib-compressed past a kilobyte) and one sorted set that orders them by when they were
dead-lettered. An entry holds the event as received, never a credential: the connector is
named by its id and re-read on replay.

A dead letter is never dropped: the store has no bound of its own (Redis's ``maxmemory``
with ``noeviction`` is the bound, and then producers get an error, not a loss). So the
count and bytes kept per tenant are counted as entries come and go (``prefsync stats``,
``/metrics``), and past ``PREFSYNC_DEADLETTER_WARN_COUNT`` entries of one tenant every
tenth of that many more logs an error an operator cannot miss. Listing and replaying read
the entries a page at a time, never all at once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import redis
import structlog
from pydantic import BaseModel

from worker.core.events import is_utf8
from worker.core.masking import without_person

ENTRIES = "prefsync:deadletters"
ORDER = "prefsync:deadletters:order"
# tenant -> entries kept, and tenant -> their bytes (as stored)
COUNTS = "prefsync:deadletters:count"
SIZES = "prefsync:deadletters:bytes"

_PAGE = 500
# Entries larger than this are stored compressed; "z" then starts the stored bytes (JSON
# never starts with it).
_COMPRESS_ABOVE = 1024

log = structlog.get_logger("prefsync.deadletter")


class Attempt(BaseModel):
    at: float  # epoch seconds
    status: int | None = None  # HTTP status, None for a network error or no call
    error: str


class DeadLetter(BaseModel):
    id: str
    tenant: str
    connector_id: str  # "" for an event that was refused before it reached a connector
    user: str
    event_key: str
    payload: Any
    attempts: list[Attempt]
    reason: str
    dead_lettered_at: float


class DeadLetterStore:
    def __init__(self, client: redis.Redis, warn_count: int = 10_000) -> None:
        self.redis = client
        self.warn_count = warn_count

    def add(self, *, once: str | None = None, **fields: Any) -> DeadLetter | None:
        """Keep a new entry. With ``once``, a second entry for the same key is not kept
        (returns None): Celery reports some failures twice (a hard time limit, say)."""
        suffix = hashlib.sha256(once.encode()).hexdigest() if once else uuid.uuid4().hex
        entry = _without_person(DeadLetter(id=f"dl-{suffix[:16]}", **fields))
        stored = _encode(entry)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(ENTRIES, entry.id, stored)
            pipe.zadd(ORDER, {entry.id: entry.dead_lettered_at}, nx=True)
            created, _ = pipe.execute()
        if not created:
            return None
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(COUNTS, entry.tenant, 1)
            pipe.hincrby(SIZES, entry.tenant, len(stored))
            count, size = pipe.execute()
        if (
            count >= self.warn_count
            and (count - self.warn_count) % max(self.warn_count // 10, 1) == 0
        ):
            log.error(
                "dead letters are piling up: look at them (prefsync dlq list --tenant), fix "
                "the cause, then replay or purge them",
                tenant=entry.tenant,
                dead_letters=count,
                bytes=size,
                threshold=self.warn_count,
                operator_action=True,
            )
        return entry

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.redis.hget(ENTRIES, entry_id)
        return _decode(raw) if raw else None

    def iter(
        self, tenant: str | None = None, connector_id: str | None = None
    ) -> Iterator[DeadLetter]:
        """Entries oldest first, filtered by tenant and/or connector id, read a page at a
        time by when they were kept, so that entries removed meanwhile (a replay) move
        nothing; one removed before its page is read is skipped."""
        after = "-inf"
        while True:
            page = self.redis.zrangebyscore(
                ORDER, after, "+inf", start=0, num=_PAGE, withscores=True
            )
            ids = [entry_id for entry_id, _ in page]
            if len(page) == _PAGE:
                # The page may cut a run of entries kept at the same time: take all of it.
                last = page[-1][1]
                ids += [i for i in self.redis.zrangebyscore(ORDER, last, last) if i not in ids]
                after = f"({last!r}"
            for raw in self.redis.hmget(ENTRIES, ids) if ids else ():
                entry = _decode(raw) if raw else None
                if (
                    entry is not None
                    and (tenant is None or entry.tenant == tenant)
                    and (connector_id is None or entry.connector_id == connector_id)
                ):
                    yield entry
            if len(page) < _PAGE:
                return

    def list(self, tenant: str | None = None, connector_id: str | None = None) -> list[DeadLetter]:
        """Every entry ``iter`` gives, as a list (for small sets: tests, one tenant)."""
        return list(self.iter(tenant, connector_id))

    def remove(self, entry_id: str) -> bool:
        raw = self.redis.hget(ENTRIES, entry_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(ENTRIES, entry_id)
            pipe.zrem(ORDER, entry_id)
            removed, _ = pipe.execute()
        if removed and raw:
            tenant = _decode(raw).tenant
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hincrby(COUNTS, tenant, -1)
                pipe.hincrby(SIZES, tenant, -len(raw))
                pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(self.redis.zcard(ORDER))

    def kept(self) -> dict[str, tuple[int, int]]:
        """tenant -> (dead letters kept, their bytes), for tenants that have any."""
        counts = self.redis.hgetall(COUNTS)
        sizes = self.redis.hgetall(SIZES)
        return {
            tenant.decode(): (int(count), int(sizes.get(tenant, 0)))
            for tenant, count in sorted(counts.items())
            if int(count) > 0
        }


def replay(
    store: DeadLetterStore,
    entries: Iterable[DeadLetter],
    enqueue: Callable[[DeadLetter], str],
) -> tuple[list[tuple[DeadLetter, str]], list[tuple[DeadLetter, str]]]:
    """Re-enqueue entries through the normal path; an entry is removed only once its
    message is enqueued, so a crash in between can only replay twice (which idempotency
    absorbs), never lose one. Returns (replayed with task id, failed with the error)."""
    done: list[tuple[DeadLetter, str]] = []
    failed: list[tuple[DeadLetter, str]] = []
    for entry in entries:
        try:
            task_id = enqueue(entry)
        except Exception as exc:
            failed.append((entry, f"{type(exc).__name__}: {exc}"))
            continue
        store.remove(entry.id)
        done.append((entry, task_id))
    return done, failed


def describe_payload_owner(payload: Any) -> tuple[str, str]:
    """Best-effort (tenant, user) of a payload that may be invalid, for listing."""
    try:
        params = payload["parameters"]
        entity = params.get("entity") or params.get("new_entity") or {}
        tenant = entity.get("organization_id") or ""
        user = entity.get("organization_user_id") or (entity.get("user") or {}).get(
            "organization_user_id", ""
        )
        return _storable(tenant), _storable(user)
    except (TypeError, KeyError, AttributeError):
        return "", ""


def _storable(value: object) -> str:
    # Both end up in Redis keys and streams, which take UTF-8 only: a lone surrogate
    # (JSON's "\ud800") would make recording the dead letter fail.
    return value if isinstance(value, str) and is_utf8(value) else ""


def _encode(entry: DeadLetter) -> bytes:
    # The json module, not pydantic: the payload kept is whatever the route task refused,
    # and pydantic can neither write a lone surrogate (json escapes it, \ud800) nor read
    # back more than about 200 levels of nesting (a poison entry would break every list).
    text = json.dumps(entry.model_dump(), separators=(",", ":")).encode()
    return b"z" + zlib.compress(text) if len(text) > _COMPRESS_ABOVE else text


def _decode(raw: bytes | str) -> DeadLetter:
    data = raw.encode() if isinstance(raw, str) else raw
    if data.startswith(b"z"):
        data = zlib.decompress(data[1:])
    return DeadLetter.model_validate(json.loads(data))


def dumps(entry: DeadLetter) -> str:
    text = json.dumps(entry.model_dump(), indent=2, ensure_ascii=False)
    # A lone surrogate in a refused payload cannot be printed: escaped, as JSON allows.
    return text if is_utf8(text) else json.dumps(entry.model_dump(), indent=2)


def _without_person(entry: DeadLetter) -> DeadLetter:
    # The reason and errors are the destination's words, which may echo the person's id:
    # they reach the audit trail and the logs, which outlive the person's erasure.
    attempts = [
        a.model_copy(update={"error": without_person(a.error, entry.user)}) for a in entry.attempts
    ]
    reason = without_person(entry.reason, entry.user)
    return entry.model_copy(update={"reason": reason, "attempts": attempts})
