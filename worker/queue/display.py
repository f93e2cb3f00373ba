"""How a message's events are shown to operators: a summary for Flower (``argsrepr`` and
``kwargsrepr``), and the ids that name each event in log lines; never a payload.
"""

from __future__ import annotations

import json
from typing import Any

from worker.core.events import EVENT_TYPES, PreferenceEvent
from worker.delivery.pipeline import event_or_none
from worker.queue.message import payloads_of
from worker.records.deadletter import describe_payload_owner


def shown_without_people(
    sender: str | None = None, body: Any = None, headers: Any = None, **_: Any
) -> None:
    """Celery's ``before_task_publish``. Flower (and ``celery inspect``) show a task's
    arguments as its message's ``argsrepr`` and ``kwargsrepr``. Ours carry events, with
    people's ids (often email addresses), so every publish of a prefsync task (first,
    retry, outbox) shows a summary instead."""
    if not isinstance(headers, dict) or not str(sender or "").startswith("prefsync."):
        return
    args, kwargs = (
        (body[0], body[1]) if isinstance(body, tuple | list) and len(body) > 1 else ((), {})
    )
    headers["argsrepr"] = describe_arguments(list(args or ()))
    headers["kwargsrepr"] = describe_keywords(dict(kwargs or {}))


def describe_arguments(args: list[Any]) -> str:
    """A task's arguments as an operator may see them: how many events, of which types
    and tenants, their consent event ids, and the connector; never a user id or a payload."""
    payloads = args[0] if args and isinstance(args[0], list) else []
    types: dict[str, int] = {}
    tenants: set[str] = set()
    ids: list[str] = []
    for payload in payloads:
        tenant, _ = describe_payload_owner(payload)
        tenants.add(tenant or "?")
        kind = payload.get("type") if isinstance(payload, dict) else None
        kind = kind if isinstance(kind, str) and kind in EVENT_TYPES else "invalid"
        types[kind] = types.get(kind, 0) + 1
        # A user payload's entity id is the person's id at the PMP: not shown.
        entity = _entity(payload) if kind.startswith("event.") else None
        if entity is not None and isinstance(entity.get("id"), str) and len(ids) < 5:
            ids.append(entity["id"][:64])
    shown = {
        "events": len(payloads),
        "types": types,
        "tenants": sorted(tenants)[:5],
        "event_ids": ids,
    }
    if len(args) > 1 and isinstance(args[1], str):
        shown["connector"] = args[1]
    return json.dumps(shown, ensure_ascii=False)


def describe_keywords(kwargs: dict[str, Any]) -> str:
    """Keyword arguments as shown: the attempts carried are counted, not listed (their
    errors are the destinations' words)."""
    shown = {
        name: len(value) if name == "attempts" and isinstance(value, list) else value
        for name, value in kwargs.items()
        if name != "attempts" or value
    }
    return json.dumps(shown, default=str)


def event_ids(
    args: list[Any] | tuple[Any, ...], events: list[PreferenceEvent | None] | None = None
) -> list[dict[str, str]]:
    """Tenant, user and event key of each payload ``args`` carries, for log lines.
    ``events``: the payloads' events where this run parsed them already."""
    ids = []
    for index, payload in enumerate(payloads_of(args)):
        tenant, user = describe_payload_owner(payload)
        event = events[index] if events is not None else None
        event = event if event is not None else event_or_none(payload)
        ids.append({"tenant": tenant, "user": user, "event_key": event.event_key if event else ""})
    return ids


def _entity(payload: Any) -> dict[str, Any] | None:
    try:
        parameters = payload["parameters"]
        entity = parameters.get("entity") or parameters.get("new_entity")
    except (TypeError, KeyError, AttributeError):
        return None
    return entity if isinstance(entity, dict) else None
