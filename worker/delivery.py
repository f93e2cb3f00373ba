"""Delivering one event to one connector: plain Python, testable without Celery.

``Deliverer.deliver`` decides whether the event has anything to say to this connector,
keeps it from overwriting newer information (worker.state) and hands the rest to the
connector. It returns an ``Outcome`` (delivered or skipped) or raises ``RetryableError`` /
``PermanentError`` for the task to retry or dead-letter.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.configs import ConnectorConfig
from worker.connectors.base import Delivered, Transport, Value
from worker.events import PreferenceEvent
from worker.outcomes import Outcome, OutcomeKind, SkipReason
from worker.pacing import PacedTransport, Pacer, account_key
from worker.state import StateStore


def skipped(reason: SkipReason, detail: str = "") -> Outcome:
    return Outcome(OutcomeKind.SKIPPED, reason=str(reason), detail=detail)


Resolved = dict[str, tuple[str, Value]]


def plan(event: PreferenceEvent, config: ConnectorConfig) -> Outcome | Resolved:
    """What ``event`` says to ``config``'s destination, or why it says nothing: for each
    mapped property that has a value, its name as the config writes it -> (canonical
    name, value). Shared by delivery and the dry-run preview so the two cannot disagree."""
    if event.skip_reason is not None:
        return skipped(event.skip_reason)
    if not config.enabled:
        return skipped(SkipReason.CONNECTOR_DISABLED)
    if not config.accepts_regulation(event.regulation):
        return skipped(SkipReason.OTHER_REGULATION, f"event regulation {event.regulation!r}")
    resolved: Resolved = {}
    for mapping in config.mappings:
        found = event.resolve(mapping.value)
        if found is not None:
            resolved[mapping.value] = found
    return resolved or skipped(SkipReason.NO_MAPPED_VALUES)


class Deliverer:
    def __init__(
        self,
        state: StateStore,
        transport: Transport,
        pacer: Pacer,
        rates: Mapping[str, float],
        max_sleep: float,
    ) -> None:
        self.state = state
        self.transport = transport
        self.pacer = pacer
        self.rates = rates
        self.max_sleep = max_sleep

    def paced(self, config: ConnectorConfig) -> Transport:
        """The transport for one delivery: paced by the rate limit of its account."""
        connector = config.connector
        return PacedTransport(
            self.transport,
            self.pacer,
            account_key(config.type_id, config.credentials),
            self.rates.get(config.type_id, connector.default_rate),
            connector.quota,
            self.max_sleep,
        )

    def deliver(self, event: PreferenceEvent, config: ConnectorConfig) -> Outcome:
        resolved = plan(event, config)
        if isinstance(resolved, Outcome):
            return resolved

        tenant, user = event.tenant, event.user
        if self.state.is_done(tenant, config.id, event.event_key):
            return skipped(SkipReason.DUPLICATE)
        with self.state.lock(tenant, config.id, user):
            # Checked again under the lock: a duplicate copy may have finished meanwhile.
            if self.state.is_done(tenant, config.id, event.event_key):
                return skipped(SkipReason.DUPLICATE)
            owned = self.state.merge(
                tenant,
                user,
                event.event_key,
                event.ordering,
                dict(resolved.values()),
            )
            values = {
                name: value for name, (canonical, value) in resolved.items() if canonical in owned
            }
            if not values:
                outcome = skipped(SkipReason.STALE)
            else:
                result = config.connector.deliver(self.paced(config), config, user, values)
                if isinstance(result, Delivered):
                    outcome = Outcome(
                        OutcomeKind.DELIVERED, status=result.status, fields=result.fields
                    )
                else:
                    outcome = skipped(SkipReason(result.reason), result.detail)
            self.state.mark_done(tenant, config.id, event.event_key)
        return outcome
