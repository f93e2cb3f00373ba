"""Every (event, connector) outcome is logged, counted and audited here, in one place."""

from __future__ import annotations

import redis
import structlog

from worker.audit import AuditTrail
from worker.outcomes import Outcome, OutcomeKind
from worker.retries import clock
from worker.state import key

TOTALS = "prefsync:stats"

log = structlog.get_logger("prefsync.outcome")


class OutcomeRecorder:
    def __init__(self, client: redis.Redis, audit: AuditTrail) -> None:
        self.redis = client
        self.audit = audit

    def record(
        self, *, tenant: str, connector_id: str, event_key: str, user: str, outcome: Outcome
    ) -> None:
        fields = [str(outcome.kind)]
        if outcome.reason and outcome.kind is OutcomeKind.SKIPPED:
            fields.append(f"{outcome.kind}:{outcome.reason}")
        with self.redis.pipeline(transaction=False) as pipe:
            for name in fields:
                pipe.hincrby(TOTALS, name, 1)
                pipe.hincrby(key("stats", tenant), name, 1)
                pipe.hincrby(key("stats", tenant, connector_id), name, 1)
            pipe.execute()
        if tenant:  # an event refused before its tenant was known has no trail to join
            self.audit.append(
                tenant=tenant,
                connector_id=connector_id,
                event_key=event_key,
                user=user,
                outcome=outcome,
                at=clock(),
            )
        log.info(
            str(outcome.kind),
            outcome=str(outcome.kind),
            reason=outcome.reason or None,
            detail=outcome.detail or None,
            status=outcome.status,
        )

    def counts(self, tenant: str | None = None, connector_id: str | None = None) -> dict[str, int]:
        if tenant is None:
            name = TOTALS
        elif connector_id is None:
            name = key("stats", tenant)
        else:
            name = key("stats", tenant, connector_id)
        return {k.decode(): int(v) for k, v in sorted(self.redis.hgetall(name).items())}
