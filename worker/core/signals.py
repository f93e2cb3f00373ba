"""Signals: what a tool tells prefsync a person did there (docs/two-way-consent.md), read from the
bodies Braze and Brevo send to ``POST /signals/{connector_id}``. No I/O.

Three body shapes, by the connector's type:

- Braze, prefsync's template (a webhook campaign): an object or an array of them,
  ``{"external_id", "email_subscribe", "push_subscribe", "subscription_group_id",
  "subscription_state", "changed_at", "id"}``;
- Braze Currents (a custom HTTP connector): ``{"events": [...]}``, subscription events;
- Brevo's marketing webhook: one event object or an array of them.

Only refusals become ``Signal``s: an unsubscribe (email, push, a subscription group),
Brevo's ``unsubscribed`` and ``spam``. Opt-ins, bounces, other events and what a tool
reports as made through its REST API (prefsync's own write coming back) are counted as
ignored. A body that is not one of the shapes is refused with one line naming where.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.core.errors import InvalidEvent

#: Braze Currents sends at most this many events in one call
CURRENTS_BATCH = 100
#: items of one array body (Brevo batches, Braze template arrays)
MAX_ITEMS = 1000
_BRAZE_STATES = ("opted_in", "subscribed", "unsubscribed")
_GROUP_STATES = ("subscribed", "unsubscribed")
_CURRENTS_TYPES = {
    "users.behaviors.subscription.GlobalStateChange": "global",
    "users.behaviors.subscriptiongroup.StateChange": "group",
}
_CURRENTS_CHANNELS = {"email": "email_subscribe", "push": "push_subscribe"}
#: Brevo's events that withdraw email consent: an unsubscribe, a spam complaint
_BREVO_REFUSALS = ("unsubscribed", "spam")
#: the Brevo field a refusal sets
BREVO_FIELD = "emailBlacklisted"


class InvalidSignal(InvalidEvent):
    """A signal body that is none of the shapes its connector's type sends (``400``)."""


class Signal(BaseModel):
    """One refusal a tool reported: who, which of the tool's fields, when."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    connector_id: str = Field(min_length=1)
    #: which body shape it came in: "braze", "braze_currents", "brevo"
    source: Literal["braze", "braze_currents", "brevo"]
    #: the tool's field the person refused: email_subscribe, push_subscribe, a Braze
    #: subscription group id, Brevo's emailBlacklisted
    field: str = Field(min_length=1)
    #: what the tool called it: unsubscribed, spam
    kind: str = Field(min_length=1)
    #: the person: their id (Braze's external_id), or for Brevo an email to resolve
    user: str = Field(min_length=1)
    user_is_email: bool = False
    #: when it happened, by the tool's clock (never after it reached prefsync)
    at: datetime
    #: what tells a copy of the same signal (a tool's retry) from another signal
    dedup: str = Field(min_length=1)

    def key(self, tenant: str) -> str:
        """The signal's id: the same for every copy the tool sends."""
        material = "\x00".join((tenant, self.connector_id, self.dedup))
        return hashlib.sha256(material.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Parsed:
    """The refusals a body holds, and how many of its items or states were ignored."""

    signals: list[Signal]
    ignored: int


def read_signals(type_id: str, connector_id: str, body: Any, received_at: datetime) -> Parsed:
    """The signals of a parsed JSON ``body`` sent for a connector of ``type_id``
    ("braze" or "sendinblue"); ``InvalidSignal`` when it is not one of that type's
    shapes. ``received_at`` dates a signal that carries no time, and bounds one that
    claims a later time than its arrival."""
    reader = _Reader(connector_id, received_at)
    if type_id == "braze":
        if isinstance(body, dict) and "events" in body:
            return reader.parse(reader.currents(body))
        return reader.parse(reader.each(body, reader.braze_template))
    if type_id == "sendinblue":
        return reader.parse(reader.each(body, reader.brevo))
    raise InvalidSignal(f"a {type_id} connector sends no signals")


#: what a reader yields for each state in a body: a refusal, or None for one ignored
_Found = Iterator["Signal | None"]


class _Reader:
    def __init__(self, connector_id: str, received_at: datetime) -> None:
        self.connector_id = connector_id
        self.received_at = received_at.astimezone(UTC)

    def parse(self, found: _Found) -> Parsed:
        signals: list[Signal] = []
        ignored = 0
        for signal in found:
            if signal is None:
                ignored += 1
            else:
                signals.append(signal)
        return Parsed(signals, ignored)

    def each(self, body: Any, read: Any) -> _Found:
        if isinstance(body, dict):
            yield from read(body, "body")
            return
        if not isinstance(body, list) or not body:
            raise InvalidSignal("body: must be a JSON object or a non-empty array of them")
        if len(body) > MAX_ITEMS:
            raise InvalidSignal(f"body: at most {MAX_ITEMS} items, not {len(body)}")
        for index, item in enumerate(body):
            if not isinstance(item, dict):
                raise InvalidSignal(f"body[{index}]: must be a JSON object")
            yield from read(item, f"body[{index}]")

    def signal(self, **fields: Any) -> Signal:
        return Signal(connector_id=self.connector_id, **fields)

    def time(self, value: Any, where: str) -> datetime:
        """A time a tool sent (epoch seconds, or ISO-8601 for our template), in UTC;
        the arrival when it is later (a tool cannot report the future)."""
        if value is None or value == "":
            return self.received_at
        if isinstance(value, bool):
            raise InvalidSignal(f"{where}: must be a time")
        if isinstance(value, int | float):
            try:
                at = datetime.fromtimestamp(value, UTC)
            except (OverflowError, OSError, ValueError):
                raise InvalidSignal(f"{where}: not a time in seconds since 1970") from None
        elif isinstance(value, str):
            try:
                at = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise InvalidSignal(f"{where}: must be an ISO-8601 time") from None
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
        else:
            raise InvalidSignal(f"{where}: must be a time")
        return min(at, self.received_at)

    # -- Braze, prefsync's template ----------------------------------------------------------

    def braze_template(self, item: dict[str, Any], where: str) -> _Found:
        user = _text(item, "external_id", where, required=True)
        event_id = _text(item, "id", where)
        at = self.time(item.get("changed_at"), f"{where}.changed_at")
        states: list[tuple[str, str]] = []
        for field in ("email_subscribe", "push_subscribe"):
            state = _state(item, field, _BRAZE_STATES, where)
            if state is not None:
                states.append((field, state))
        group = _text(item, "subscription_group_id", where)
        group_state = _state(item, "subscription_state", _GROUP_STATES, where)
        if (group is None) != (group_state is None):
            raise InvalidSignal(
                f"{where}: subscription_group_id and subscription_state go together"
            )
        if group is not None and group_state is not None:
            states.append((group, group_state))
        if not states:
            raise InvalidSignal(
                f"{where}: needs email_subscribe, push_subscribe or a subscription group's "
                "subscription_state"
            )
        for field, state in states:
            if state != "unsubscribed":
                yield None
                continue
            # Without an id, a copy is told from another signal by its time (when given).
            name = event_id or f"{user}\x00{item.get('changed_at') or at.isoformat()}"
            yield self.signal(
                source="braze",
                field=field,
                kind=state,
                user=user,
                at=at,
                dedup=f"braze\x00{name}\x00{field}",
            )

    # -- Braze Currents ------------------------------------------------------------------------

    def currents(self, body: dict[str, Any]) -> _Found:
        events = body["events"]
        if not isinstance(events, list):
            raise InvalidSignal("events: must be an array")
        if len(events) > CURRENTS_BATCH:
            raise InvalidSignal(f"events: at most {CURRENTS_BATCH}, not {len(events)}")
        for index, event in enumerate(events):
            where = f"events[{index}]"
            if not isinstance(event, dict):
                raise InvalidSignal(f"{where}: must be a JSON object")
            kind = _CURRENTS_TYPES.get(event.get("event_type"))  # type: ignore[arg-type]
            if kind is None:
                yield None
                continue
            yield self.currents_event(event, kind, where)

    def currents_event(self, event: dict[str, Any], kind: str, where: str) -> Signal | None:
        event_id = _text(event, "id", where, required=True)
        user = event.get("user")
        properties = event.get("properties")
        if not isinstance(user, dict):
            raise InvalidSignal(f"{where}.user: must be an object")
        if not isinstance(properties, dict):
            raise InvalidSignal(f"{where}.properties: must be an object")
        status = _text(properties, "subscription_status", f"{where}.properties", required=True)
        at = self.time(event.get("time"), f"{where}.time")
        external_id = _text(user, "external_user_id", f"{where}.user")
        source = properties.get("state_change_source")
        if status.lower() != "unsubscribed" or external_id is None or source == "REST API":
            # An opt-in; someone prefsync never named (no external id); prefsync's own write.
            return None
        if kind == "group":
            field = _text(properties, "subscription_group_id", f"{where}.properties", True)
        else:
            channel = properties.get("channel")
            field = _CURRENTS_CHANNELS.get(channel)  # type: ignore[arg-type]
            if field is None:
                return None  # another channel (SMS...): no field prefsync maps
        return self.signal(
            source="braze_currents",
            field=field,
            kind="unsubscribed",
            user=external_id,
            at=at,
            dedup=f"currents\x00{event_id}",
        )

    # -- Brevo ----------------------------------------------------------------------------------

    def brevo(self, item: dict[str, Any], where: str) -> _Found:
        event = _text(item, "event", where, required=True)
        if event not in _BREVO_REFUSALS:
            yield None
            return
        email = _text(item, "email", where, required=True)
        # ts_event is when it happened (date_event is in the account's local time); the
        # webhook's id is the same for every event it sends, so it names nothing.
        raw_time = item.get("ts_event", item.get("ts"))
        at = self.time(raw_time, f"{where}.ts_event")
        yield self.signal(
            source="brevo",
            field=BREVO_FIELD,
            kind=event,
            user=email,
            user_is_email=True,
            at=at,
            # Without a time, copies cannot be told apart: a duplicate is harmless (the same
            # refusal again changes nothing), a real signal taken for a copy is not.
            dedup=f"brevo\x00{event}\x00{email}\x00{raw_time or at.isoformat()}",
        )


def _text(item: dict[str, Any], name: str, where: str, required: bool = False) -> Any:
    """A non-empty string of ``item``, or None when absent (a template's empty Liquid
    output counts as absent)."""
    value = item.get(name)
    if value is None or value == "":
        if required:
            raise InvalidSignal(f"{where}.{name}: field required")
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # an id sent as a number
    if not isinstance(value, str):
        raise InvalidSignal(f"{where}.{name}: must be a string")
    return value.strip() or None


def _state(item: dict[str, Any], name: str, known: tuple[str, ...], where: str) -> str | None:
    value = _text(item, name, where)
    if value is None:
        return None
    state = value.lower()
    if state not in known:
        raise InvalidSignal(f"{where}.{name}: must be one of {', '.join(known)}")
    return state
