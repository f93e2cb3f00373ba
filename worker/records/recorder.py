"""Every (event, connector) outcome is logged, counted and audited here, in one place;
and when each mapping last matched an event, so that one that never does is visible.

The audit trail names a person by the keyed hash of their id (worker.infra.pseudonym), never by
the id: once they are erased it still proves what each destination was told, yet holds
nothing that names them (``prefsync audit --user`` hashes the id it is given). The key of
a user payload's event (``user.updated:<PMP user id>:<time>``) holds the PMP's id of the
person, so it is kept as its type and a keyed hash."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace

import redis
import structlog
from redis.client import Pipeline

from worker.connectors.model import ConnectorConfig
from worker.connectors.model import Mapping as MappingConfig
from worker.core.masking import without_person
from worker.core.outcomes import Outcome, OutcomeKind
from worker.core.retries import clock
from worker.infra.pseudonym import Pseudonyms
from worker.records import metrics
from worker.records.audit import AuditTrail
from worker.records.state import key

TOTALS = "prefsync:stats"

log = structlog.get_logger("prefsync.outcome")


@dataclass(frozen=True, slots=True)
class Ended:
    """How one event ended for one connector."""

    event_key: str
    user: str
    outcome: Outcome


def _without_person(item: Ended) -> Ended:
    # A reason or detail may carry a destination's message echoing the person's id: the
    # audit trail and the log keep it without them.
    outcome = item.outcome
    reason, detail = (without_person(text, item.user) for text in (outcome.reason, outcome.detail))
    if (reason, detail) == (outcome.reason, outcome.detail):
        return item
    return replace(item, outcome=replace(outcome, reason=reason, detail=detail))


def _counted(outcome: Outcome) -> list[str]:
    names = [str(outcome.kind)]
    if outcome.reason and outcome.kind is OutcomeKind.SKIPPED:
        names.append(f"{outcome.kind}:{outcome.reason}")
    return names


def _log(tenant: str, connector_id: str, ended: Sequence[Ended], totals: Counter[str]) -> None:
    """One line for the events delivered together (a destination call): their keys, how
    many, and how every event recorded with them ended; a line of its own for a lone
    delivered event and for each event that did not reach the destination (skipped,
    dead-lettered), saying why."""
    delivered = [item.event_key for item in ended if item.outcome.kind is OutcomeKind.DELIVERED]
    together = len(delivered) > 1
    if together:
        statuses = {item.outcome.status for item in ended if item.event_key in delivered}
        log.info(
            str(OutcomeKind.DELIVERED),
            tenant=tenant,
            connector_id=connector_id,
            count=len(delivered),
            event_keys=delivered,
            outcomes=dict(totals),
            status=sorted(statuses, key=str),
        )
    for item in ended:
        outcome = item.outcome
        if together and outcome.kind is OutcomeKind.DELIVERED:
            continue
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


class OutcomeRecorder:
    def __init__(
        self,
        client: redis.Redis,
        audit: AuditTrail,
        pseudonyms: Pseudonyms,
        by_tenant: bool = False,
    ) -> None:
        self.redis = client
        self.audit = audit
        self.pseudonyms = pseudonyms
        self.by_tenant = by_tenant  # PREFSYNC_METRICS_TENANT_LABEL

    def audited_event_key(self, event_key: str) -> str:
        """An event key as the audit trail keeps it: a user payload's (which holds the
        PMP's id of the person) as its type and a keyed hash; a consent event's as it is."""
        kind, colon, _ = event_key.partition(":")
        if not colon or not kind.startswith("user."):
            return event_key
        return f"{kind}:{self.pseudonyms.of('event', event_key)}"

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
        also holds ``also``'s commands: what the events told each connector (worker.records.state)
        is written with the audit entry or not at all, so no delivered event is ever
        audited only as a duplicate. One audit entry and one log line serve the call.

        The metrics (worker.records.metrics) are counted in the same transaction: by
        ``connector_type``, with the latency from ``enqueued_at`` (when the message said)
        and the destination's ``answers`` (HTTP statuses) that led to these outcomes."""
        if not ended and also is None and not answers:
            return
        ended = [_without_person(item) for item in ended]
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
            if tenant and ended:  # an event refused before its tenant was known: no trail
                audited = [
                    (
                        self.audited_event_key(item.event_key),
                        self.pseudonyms.user(item.user) if item.user else "",
                        item.outcome,
                    )
                    for item in ended
                ]
                self.audit.append(
                    tenant=tenant, connector_id=connector_id, outcomes=audited, at=now, client=pipe
                )
            pipe.execute()
        _log(tenant, connector_id, ended, totals)

    def matches(
        self, tenant: str, config: ConnectorConfig, resolved: Iterable[Collection[str]]
    ) -> Callable[[Pipeline], object] | None:
        """What records, in an outcome transaction, that each mapping of ``config`` whose
        property has a value in one of ``resolved`` (the mapped property names an event
        gives a value, one collection per event) matched an event now: one HSET for a
        whole batch. None when no mapping matched."""
        named = set().union(*resolved)
        now = clock()
        times = {_match_field(m): now for m in config.mappings if m.value in named}
        if not times:
            return None
        return lambda pipe: pipe.hset(_matches_key(tenant, config.id), mapping=times)

    def last_matched(self, tenant: str, config: ConnectorConfig) -> list[float | None]:
        """When each mapping of ``config`` last matched an event (epoch seconds), in order;
        None for one that never did. A mapping whose property changed starts afresh."""
        fields = [_match_field(mapping) for mapping in config.mappings]
        stored = self.redis.hmget(_matches_key(tenant, config.id), fields)
        return [None if at is None else float(at) for at in stored]

    def forget_matches(self, tenant: str, connector_id: str) -> None:
        self.redis.delete(_matches_key(tenant, connector_id))

    def counts(self, tenant: str | None = None, connector_id: str | None = None) -> dict[str, int]:
        if tenant is None:
            name = TOTALS
        elif connector_id is None:
            name = key("stats", tenant)
        else:
            name = key("stats", tenant, connector_id)
        return {k.decode(): int(v) for k, v in sorted(self.redis.hgetall(name).items())}


def _matches_key(tenant: str, connector_id: str) -> str:
    return key("matched", tenant, connector_id)


def _match_field(mapping: MappingConfig) -> str:
    # Id and property together: a mapping pointed at another property has not matched yet.
    return json.dumps([mapping.id, mapping.value], ensure_ascii=False)
