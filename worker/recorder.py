"""Every (event, connector) outcome is logged, counted and audited here, in one place."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis
import structlog
from redis.client import Pipeline

from worker import metrics
from worker.audit import AuditTrail
from worker.outcomes import Outcome, OutcomeKind
from worker.retries import clock
from worker.state import key

TOTALS = "prefsync:stats"

log = structlog.get_logger("prefsync.outcome")


@dataclass(frozen=True, slots=True)
class Ended:
    """How one event ended for one connector."""

    event_key: str
    user: str
    outcome: Outcome


def _counted(outcome: Outcome) -> list[str]:
    names = [str(outcome.kind)]
    if outcome.reason and outcome.kind is OutcomeKind.SKIPPED:
        names.append(f"{outcome.kind}:{outcome.reason}")
    return names


class OutcomeRecorder:
    def __init__(self, client: redis.Redis, audit: AuditTrail, by_tenant: bool = False) -> None:
        self.redis = client
        self.audit = audit
        self.by_tenant = by_tenant  # PREFSYNC_METRICS_TENANT_LABEL

    def record(
        self,
        tenant: str,
        connector_id: str,
        ended: Sequence[Ended],
        also: Callable[[Pipeline], object] | None = None,
        *,
        connector_type: str = "",
        enqueued_at: float | None = None,
        answers: Counter[int | None] | None = None,
    ) -> None:
        """Count, audit and log how each of ``ended`` ended, in one Redis transaction that
        also holds ``also``'s commands: the done markers are written with the audit
        entries or not at all, so no delivered event is ever audited only as a duplicate.

        The metrics (worker.metrics) are counted in the same transaction: by
        ``connector_type``, with the latency from ``enqueued_at`` (when the message said)
        and the destination's ``answers`` (HTTP statuses) that led to these outcomes."""
        if not ended and also is None and not answers:
            return
        totals = Counter(name for item in ended for name in _counted(item.outcome))
        now = clock()
        with self.redis.pipeline(transaction=True) as pipe:
            if also is not None:
                also(pipe)
            metrics.count_outcomes(
                pipe,
                connector_type,
                [item.outcome for item in ended],
                now,
                enqueued_at,
                tenant if self.by_tenant else None,
            )
            if answers:
                metrics.count_answers(pipe, connector_type, answers)
            for name, count in totals.items():
                pipe.hincrby(TOTALS, name, count)
                pipe.hincrby(key("stats", tenant), name, count)
                pipe.hincrby(key("stats", tenant, connector_id), name, count)
            if tenant:  # an event refused before its tenant was known has no trail to join
                for item in ended:
                    self.audit.append(
                        tenant=tenant,
                        connector_id=connector_id,
                        event_key=item.event_key,
                        user=item.user,
                        outcome=item.outcome,
                        at=now,
                        client=pipe,
                    )
            pipe.execute()
        for item in ended:
            outcome = item.outcome
            log.info(
                str(outcome.kind),
                tenant=tenant,
                connector_id=connector_id,
                event_key=item.event_key,
                user=item.user,
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
