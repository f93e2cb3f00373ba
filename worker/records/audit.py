"""The audit trail: what prefsync told each destination about a person, and when.

One Redis stream per tenant, holding at most ``PREFSYNC_AUDIT_MAXLEN`` outcomes (the oldest
go first). Every (event, connector) outcome is appended: delivered with the destination
fields written, skipped with its reason, dead-lettered with why. It is the proof a company
gives when asked whether an opt-out was propagated. No credential is ever part of an
outcome.

The outcomes recorded together (those of one destination call, say) share one stream
entry, which lists them: one XADD per call rather than per event. ``query`` hands them
back one ``AuditEntry`` per outcome, as entries of one outcome each (the shape a release
before this one wrote) always were.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from pydantic import BaseModel

from worker.core.outcomes import Outcome
from worker.records.scripts import Scripts
from worker.records.state import key

# How many stream entries one query reads at a time while filtering by user.
_PAGE = 500

#: One outcome to audit: the event key (as kept: OutcomeRecorder.audited_event_key), the
#: person (their keyed hash, "" for none) and the outcome.
Audited = tuple[str, str, Outcome]


class AuditEntry(BaseModel):
    id: str  # the stream id (milliseconds-sequence), then ".n" in an entry of several: unique
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
        self.scripts = Scripts(client)

    def append(
        self,
        *,
        tenant: str,
        connector_id: str,
        outcomes: Sequence[Audited],
        at: float,
        client: redis.Redis | None = None,
    ) -> None:
        """Append the outcomes of one connector recorded together, as one stream entry
        (through ``client``, a pipeline say, when given)."""
        listed = [
            [
                event_key,
                user,
                str(outcome.kind),
                outcome.reason,
                outcome.status,
                dict(outcome.fields),
            ]
            for event_key, user, outcome in outcomes
        ]
        entry = {
            "n": str(len(listed)),
            "at": repr(at),
            "connector_id": connector_id,
            "outcomes": json.dumps(listed, ensure_ascii=False, separators=(",", ":")),
        }
        self.scripts.run(
            "audit_append",
            [_stream(tenant), _held(tenant)],
            [self.maxlen, len(listed), *(part for pair in entry.items() for part in pair)],
            client,
        )

    def query(self, tenant: str, user: str | None = None, limit: int = 50) -> list[AuditEntry]:
        """The newest ``limit`` outcomes of a tenant (of one user, if given), newest first."""
        found: list[AuditEntry] = []
        upper = "+"
        while len(found) < limit:
            page = self.redis.xrevrange(_stream(tenant), max=upper, count=_PAGE)
            for stream_id, raw in page:
                for entry in _entries(stream_id, raw):
                    if user is None or entry.user == user:
                        found.append(entry)
            if len(page) < _PAGE:
                break
            upper = f"({page[-1][0].decode()}"
        return found[:limit]

    def length(self, tenant: str) -> int:
        """How many outcomes the tenant's trail holds."""
        held = self.redis.get(_held(tenant))
        return int(held) if held is not None else int(self.redis.xlen(_stream(tenant)))


def _stream(tenant: str) -> str:
    return key("audit", tenant)


def _held(tenant: str) -> str:
    return key("audit-held", tenant)


def _entries(stream_id: bytes, raw: Mapping[bytes, bytes]) -> list[AuditEntry]:
    """The outcomes of one stream entry, newest first. An entry that lists several names
    each by its stream id and its place in the entry (``<id>.<n>``)."""
    data = {k.decode(): v.decode() for k, v in raw.items()}
    if "outcomes" in data:
        listed = json.loads(data["outcomes"])
    else:  # one outcome, as a release before this one wrote it
        status = int(data["status"]) if data["status"] else None
        fields = json.loads(data["fields"])
        listed = [[data[name] for name in ("event_key", "user", "outcome", "reason")]]
        listed[0] += [status, fields]
    name = stream_id.decode()
    return [
        AuditEntry(
            id=name if len(listed) == 1 else f"{name}.{n}",
            at=float(data["at"]),
            connector_id=data["connector_id"],
            event_key=event_key,
            user=user,
            outcome=outcome,
            reason=reason,
            status=status,
            fields=fields,
        )
        for n, (event_key, user, outcome, reason, status, fields) in reversed(
            list(enumerate(listed))
        )
    ]
