"""The dead-letter store: deliveries that could not be made, kept for an operator.

Redis has no dead-letter exchange, so this is ours: one hash of entries (JSON) and one
sorted set that orders them by when they were dead-lettered. An entry holds the event as
received, never a credential: the connector is named by its id and re-read on replay.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import redis
from pydantic import BaseModel

from worker.events import is_utf8

ENTRIES = "prefsync:deadletters"
ORDER = "prefsync:deadletters:order"


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
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def add(self, *, once: str | None = None, **fields: Any) -> DeadLetter | None:
        """Keep a new entry. With ``once``, a second entry for the same key is not kept
        (returns None): Celery reports some failures twice (a hard time limit, say)."""
        suffix = hashlib.sha256(once.encode()).hexdigest() if once else uuid.uuid4().hex
        entry = DeadLetter(id=f"dl-{suffix[:16]}", **fields)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(ENTRIES, entry.id, _encode(entry))
            pipe.zadd(ORDER, {entry.id: entry.dead_lettered_at}, nx=True)
            created, _ = pipe.execute()
        return entry if created else None

    def get(self, entry_id: str) -> DeadLetter | None:
        raw = self.redis.hget(ENTRIES, entry_id)
        return _decode(raw) if raw else None

    def list(self, tenant: str | None = None, connector_id: str | None = None) -> list[DeadLetter]:
        """Entries oldest first, filtered by tenant and/or connector id."""
        ids = self.redis.zrange(ORDER, 0, -1)
        if not ids:
            return []
        entries = [_decode(raw) for raw in self.redis.hmget(ENTRIES, ids) if raw]
        return [
            e
            for e in entries
            if (tenant is None or e.tenant == tenant)
            and (connector_id is None or e.connector_id == connector_id)
        ]

    def remove(self, entry_id: str) -> bool:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(ENTRIES, entry_id)
            pipe.zrem(ORDER, entry_id)
            removed, _ = pipe.execute()
        return bool(removed)

    def count(self) -> int:
        return int(self.redis.zcard(ORDER))


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


def _encode(entry: DeadLetter) -> str:
    # The json module, not pydantic: the payload kept is whatever the route task refused,
    # and pydantic can neither write a lone surrogate (json escapes it, \ud800) nor read
    # back more than about 200 levels of nesting (a poison entry would break every list).
    return json.dumps(entry.model_dump())


def _decode(raw: bytes | str) -> DeadLetter:
    return DeadLetter.model_validate(json.loads(raw))


def dumps(entry: DeadLetter) -> str:
    text = json.dumps(entry.model_dump(), indent=2, ensure_ascii=False)
    # A lone surrogate in a refused payload cannot be printed: escaped, as JSON allows.
    return text if is_utf8(text) else json.dumps(entry.model_dump(), indent=2)
