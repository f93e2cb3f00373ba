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
from worker.records.state import key

# How many stream entries one query reads at a time while filtering by user.
_PAGE = 500

# KEYS: the stream, how many outcomes it holds (absent: a stream of one outcome an entry,
# as an older release wrote it). ARGV: the bound, how many outcomes the entry lists, then
# the entry's fields and values. Appends the entry, then removes the oldest entries until
# the stream holds no more outcomes than the bound. An exact bound (not "~"): operators
# size Redis by it.
_APPEND = """
local held = tonumber(redis.call('GET', KEYS[2]) or redis.call('XLEN', KEYS[1]))
held = held + tonumber(ARGV[2])
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
local bound = tonumber(ARGV[1])
while held > bound do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 4)
  if #oldest == 0 then held = 0; break end
  local cut = {}
  for _, entry in ipairs(oldest) do
    if held <= bound then break end
    local count, fields = 1, entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'n' then count = tonumber(fields[i + 1]) end
    end
    held = held - count
    cut[#cut + 1] = entry[1]
  end
  redis.call('XDEL', KEYS[1], unpack(cut))
end
redis.call('SET', KEYS[2], held)
return held
"""

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
        self._append = client.register_script(_APPEND)

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
        self._append(
            keys=[_stream(tenant), _held(tenant)],
            args=[self.maxlen, len(listed), *(part for pair in entry.items() for part in pair)],
            client=client or self.redis,
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
