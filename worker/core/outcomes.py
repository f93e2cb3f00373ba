"""The three ways an (event, connector) pair can end, and why one was skipped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class OutcomeKind(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"
    DEAD_LETTERED = "dead_lettered"


class SkipReason(StrEnum):
    STALE = "stale"  # every field it touched already holds newer information
    UNCHANGED = "unchanged"  # what it changed leaves every field as the destination has it
    NO_MAPPED_VALUES = "no_mapped_values"  # none of the connector's mappings has a value
    CONTACT_UNKNOWN = "contact_unknown"  # destination does not know the user; upsert is off
    PENDING = "pending"  # pending_approval: not consent yet
    UNSUPPORTED_TYPE = "unsupported_type"  # event.deleted; user.deleted when on_user_deleted=ignore
    OTHER_REGULATION = "other_regulation"  # the connector is limited to other regulations
    DUPLICATE = "duplicate"  # this event already ended for this connector
    CONNECTOR_DISABLED = "connector_disabled"  # disabled after the event was routed
    ERASED = "erased"  # the person was erased after this event: it must not bring them back


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one (event, connector) pair ended."""

    kind: OutcomeKind
    reason: str = ""  # a SkipReason for skipped, why for dead-lettered
    detail: str = ""
    status: int | None = None  # the destination's last HTTP status, when it answered
    fields: Mapping[str, Any] = field(default_factory=dict)  # destination fields written
