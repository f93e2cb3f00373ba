"""The audit trail: what prefsync told each destination about a person, and when.

One Redis stream per tenant, bounded to ``PREFSYNC_AUDIT_MAXLEN`` entries (the oldest go
first). Every (event, connector) outcome is appended: delivered with the destination fields
written, skipped with its reason, dead-lettered with why. It is the proof a company gives
when asked whether an opt-out was propagated. No credential is ever part of an outcome.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import redis
from pydantic import BaseModel

from worker.outcomes import Outcome
from worker.state import key

# How many stream entries one query reads at a time while filtering by user.
_PAGE = 500


class AuditEntry(BaseModel):
    id: str  # the stream id: milliseconds-sequence, unique and ordered
    at: float
    connector_id: str
    event_key: str
    user: str
    outcome: str
    reason: str = ""
    status: int | None = None
    fields: dict[str, Any] = {}


class AuditTrail:
    def __init__(self, client: redis.Redis, maxlen: int) -> None:
        self.redis = client
        self.maxlen = maxlen

    def append(
        self,
        *,
        tenant: str,
        connector_id: str,
        event_key: str,
        user: str,
        outcome: Outcome,
        at: float,
        client: redis.Redis | None = None,
    ) -> None:
        """Append one entry (through ``client``, a pipeline say, when given)."""
        entry: Mapping[str, str] = {
            "at": repr(at),
            "connector_id": connector_id,
            "event_key": event_key,
            "user": user,
            "outcome": str(outcome.kind),
            "reason": outcome.reason,
            "status": "" if outcome.status is None else str(outcome.status),
            "fields": json.dumps(dict(outcome.fields), ensure_ascii=False),
        }
        # An exact bound (not "~"): operators size Redis by it.
        (client or self.redis).xadd(
            key("audit", tenant), dict(entry), maxlen=self.maxlen, approximate=False
        )

    def query(self, tenant: str, user: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` entries of a tenant (of one user, if given), newest first."""
        found: list[AuditEntry] = []
        upper = "+"
        while len(found) < limit:
            page = self.redis.xrevrange(key("audit", tenant), max=upper, count=_PAGE)
            for stream_id, raw in page:
                entry = _entry(stream_id, raw)
                if user is None or entry.user == user:
                    found.append(entry)
            if len(page) < _PAGE:
                break
            upper = f"({page[-1][0].decode()}"
        return found[:limit]

    def length(self, tenant: str) -> int:
        return int(self.redis.xlen(key("audit", tenant)))


def _entry(stream_id: bytes, raw: Mapping[bytes, bytes]) -> AuditEntry:
    data = {k.decode(): v.decode() for k, v in raw.items()}
    return AuditEntry(
        id=stream_id.decode(),
        at=float(data["at"]),
        connector_id=data["connector_id"],
        event_key=data["event_key"],
        user=data["user"],
        outcome=data["outcome"],
        reason=data["reason"],
        status=int(data["status"]) if data["status"] else None,
        fields=json.loads(data["fields"]),
    )
