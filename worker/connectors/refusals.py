"""The inverse mapping: a destination field a person refused in the tool, turned back into
the PMP property values that make it refused, through the connector's own mappings, and
the consent event that tells the PMP (docs/two-way-consent.md#what-a-refusal-does).

Every mapping that feeds the refused field (``Feed``) is given the value whose state is
the field's refusal: a property mapped to ``OPTED_IN``, ``PUSH_OPTED_IN``, a subscription
group or ``EMAIL_CAMPAIGNS_SUBSCRIBED`` becomes ``false``; one mapped to ``UNSUBSCRIBED``
or ``PUSH_UNSUBSCRIBED`` becomes ``true``. A purpose's ``enabled`` property becomes that
purpose's ``enabled`` in the consent event.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from worker.connectors.base import Account, feeds
from worker.connectors.pmp import ConsentEvent, Purpose
from worker.core.errors import InvalidEvent
from worker.core.signals import Signal

#: ``consents_purposes_<P>_enabled``, either separator: the purpose's own consent
_PURPOSE_ENABLED = re.compile(r"consents__?purposes__?(?P<purpose>.+?)__?enabled")
_NOT_A_PURPOSE_ID = ("_values_", "_preferences_", "__values__", "__preferences__")


def refused_values(config: Account, field: str) -> dict[str, bool]:
    """Property name (as the config writes it) -> the value that makes ``field`` refused,
    for every mapping of ``config`` feeding it. Empty when no mapping does: a refused
    field with no property behind it writes nothing. Fields compare without case (Braze's
    group ids are UUIDs in any case)."""
    values: dict[str, bool] = {}
    for mapping, feed in feeds(config):
        if feed is None or feed.field.casefold() != field.casefold():
            continue
        refusal = feed.strongest_first[0]
        values[mapping.value] = feed.if_true == refusal
    return values


def purpose_of(property_name: str) -> str | None:
    """The purpose id of a ``consents_purposes_<P>_enabled`` property; None for any other
    shape (a preference value, legitimate interest, a channel)."""
    match = _PURPOSE_ENABLED.fullmatch(property_name)
    if match is None or any(word in match["purpose"] for word in _NOT_A_PURPOSE_ID):
        return None
    return match["purpose"]


def consent_event(
    tenant: str, signal: Signal, person: str, values: dict[str, bool], regulation: str
) -> ConsentEvent | None:
    """The consent event telling the PMP of ``signal``'s refusal by ``person`` (the PMP's
    user id), from ``values`` (``refused_values``); None when none of them is a purpose's
    consent. Its id is the same for every copy of the signal, so a retry cannot create it
    twice."""
    purposes = tuple(
        Purpose(id=purpose, enabled=value)
        for name, value in sorted(values.items())
        if (purpose := purpose_of(name)) is not None
    )
    if not purposes:
        return None
    return ConsentEvent(
        id=f"prefsync-{signal.key(tenant)}",
        created_at=signal.at,
        user_id=person,
        regulation=regulation,
        purposes=purposes,
        metadata={"connector": signal.connector_id, "signal": signal.kind},
    )


def event_payload(tenant: str, event: ConsentEvent) -> dict[str, Any]:
    """``event`` as the PMP's own ``event.created`` webhook payload for ``tenant``: what
    the pipeline carries to the person's state and the tenant's connectors, and what
    ``consent_event_of`` reads back to write it to the PMP."""
    return {
        "type": "event.created",
        "parameters": {"entity": {**event.body(), "organization_id": tenant}},
    }


def consent_event_of(payload: Any) -> ConsentEvent:
    """The consent event an ``event_payload`` carries; ``InvalidEvent`` for any other
    payload (a dead letter edited by hand, say)."""
    try:
        entity = payload["parameters"]["entity"]
        return ConsentEvent(
            id=entity["id"],
            created_at=entity["created_at"],
            user_id=entity["user"]["organization_user_id"],
            regulation=entity["regulation"],
            purposes=entity["consents"]["purposes"],
            metadata=entity["delegate"]["metadata"],
        )
    except (KeyError, TypeError, ValidationError) as exc:
        raise InvalidEvent(f"not a consent event prefsync wrote for a refusal ({exc})") from None
