"""Dry run: what the worker would send each of a tenant's connectors for an event, without
sending anything. It goes through the same ``delivery.plan`` and the same connector
``requests`` as a real delivery; only the newest-wins state is left out (a preview does
not know which of the tenant's later events the worker has already merged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from worker.connectors.base import erasure_change, standalone_change
from worker.connectors.model import ConnectorConfig
from worker.core.errors import InvalidConfig, PermanentError
from worker.core.events import PreferenceEvent
from worker.core.outcomes import Outcome
from worker.delivery.deliverer import plan


@dataclass(frozen=True, slots=True)
class Preview:
    connector_id: str
    type_id: str
    properties: dict[str, Any]  # mapped property name -> the value the event gives it
    requests: list[dict[str, Any]]  # method, url, headers (keys masked), body; in order
    skipped: str = ""  # why nothing would be sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "connector_id": self.connector_id,
            "type_id": self.type_id,
            "properties": self.properties,
            "requests": self.requests,
            "skipped": self.skipped or None,
        }


def preview(event: PreferenceEvent, config: ConnectorConfig) -> Preview:
    resolved = plan(event, config)
    if isinstance(resolved, Outcome):
        reason = f"{resolved.reason}: {resolved.detail}" if resolved.detail else resolved.reason
        return Preview(config.id, config.type_id, {}, [], skipped=reason)
    values = {name: value for name, (_, value) in resolved.items()}
    # An erasure's calls are the connector's on_user_deleted (plan() ended "ignore").
    change = erasure_change(config, event.user) if event.erasure else None
    try:
        # Fed fields from this event's values alone: the person's other values are in
        # the worker's state, which a preview does not read.
        sent = config.connector.requests(
            config, change or standalone_change(config, event.user, values)
        )
    except PermanentError as exc:  # a mapping that cannot take this value: the worker
        return Preview(config.id, config.type_id, values, [], skipped=f"refused: {exc}")
    return Preview(
        config.id,
        config.type_id,
        values,
        [request.redacted() for request in sent],
        skipped="" if sent else "no_mapped_values: the values map to no field",
    )


def broken(connector_id: str, error: InvalidConfig) -> Preview:
    """The preview of a stored config that no longer validates: the worker refuses it."""
    return Preview(connector_id, "?", {}, [], skipped=str(error))
