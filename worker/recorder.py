"""Every (event, connector) outcome is logged and counted here, in one place."""

from __future__ import annotations

import redis
import structlog

from worker.outcomes import Outcome, OutcomeKind
from worker.state import key

TOTALS = "prefsync:stats"

log = structlog.get_logger("prefsync.outcome")


class OutcomeRecorder:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client

    def record(self, *, tenant: str, connector_id: str, outcome: Outcome) -> None:
        fields = [str(outcome.kind)]
        if outcome.reason and outcome.kind is OutcomeKind.SKIPPED:
            fields.append(f"{outcome.kind}:{outcome.reason}")
        with self.redis.pipeline(transaction=False) as pipe:
            for name in fields:
                pipe.hincrby(TOTALS, name, 1)
                pipe.hincrby(key("stats", tenant), name, 1)
                pipe.hincrby(key("stats", tenant, connector_id), name, 1)
            pipe.execute()
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
