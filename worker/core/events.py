"""Preference events: turning a PMP webhook payload into what the worker propagates.

A producer forwards the PMP's webhook payload unchanged (docs/vendors.md, the event format
reference, describes it). ``parse_event`` validates it and returns a ``PreferenceEvent``,
which knows:

* who it is about (``tenant``, ``user``) and its idempotency key (``event_key``);
* how it orders against other information about the same user (``ordering``);
* whether it is propagated at all (``skip_reason``);
* what it propagates for a mapping's flat property name (``resolve``).

Flat property names (``consents_purposes_newsletter_enabled``...) are built from the
payload's ids and looked up, never split on ``_``: ids such as ``geolocation_data``
contain underscores, so splitting cannot tell an id from a separator.

This module is plain Python and pydantic: no Celery, no Redis.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from worker.core.errors import EventTooLarge, InvalidEvent
from worker.core.outcomes import SkipReason
from worker.core.validation import Location, describe

#: A resolved PMP property value: booleans for consents, strings for preference values.
Value = bool | str

EVENT_TYPES = (
    "event.created",
    "event.updated",
    "event.deleted",
    "user.created",
    "user.updated",
    "user.deleted",
)
_CHANGE_TYPES = frozenset({"event.updated", "user.updated"})
_NOT_PROPAGATED = frozenset({"event.deleted"})
#: the erasure of a person: each connector's on_user_deleted says what it does
ERASURE = "user.deleted"

CONFIRMED = "confirmed"
PENDING_APPROVAL = "pending_approval"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


# --- Ordering -------------------------------------------------------------------------

# Two user payloads' versions order them only when this close; further apart, their
# timestamps do. A version can then outrank at most this many later changes of a person.
MAX_VERSION_STEP = 10
# The largest version accepted: Redis's Lua compares numbers as doubles, exact up to here.
MAX_VERSION = 2**53 - 1


@dataclass(frozen=True, slots=True)
class OrderingKey:
    """How new the information in an event is, to keep newer values from being overwritten.

    ``timestamp_us`` is the entity's ``updated_at`` (else ``created_at``) in integer
    microseconds since the epoch: integers compare exactly, floats would not.
    ``version`` is a user payload's ``version``; ``None`` for consent events.
    """

    timestamp_us: int
    version: int | None

    def newer_than(self, other: OrderingKey) -> bool:
        # Didomi bumps a user's version on every change, so between two user payloads it
        # is the reliable order; clocks are the fallback for everything else. Only within
        # MAX_VERSION_STEP, though: one forged or buggy version far ahead would otherwise
        # make every later change of the person stale, forever (the same rule as
        # person.lua's newer).
        if self.version is not None and other.version is not None:
            step = self.version - other.version
            if 0 < abs(step) <= MAX_VERSION_STEP:
                return step > 0
        # A tie is not newer: the value already recorded stays, so a replay changes nothing.
        return self.timestamp_us > other.timestamp_us


def _timestamp_us(raw: str) -> int:
    moment = datetime.fromisoformat(raw)
    if moment.tzinfo is None:
        # The PMP writes UTC ("...Z"); a timestamp without an offset is read the same way.
        moment = moment.replace(tzinfo=UTC)
    # In UTC first: an offset can carry a moment past year 9999 or before year 1, which
    # no datetime holds (OverflowError); it is refused here, not where it is next shown.
    return (moment.astimezone(UTC) - _EPOCH) // _MICROSECOND


def _check_timestamp(raw: str) -> str:
    try:
        _timestamp_us(raw)
    except ValueError:
        raise PydanticCustomError("timestamp", "not an ISO-8601 timestamp") from None
    except OverflowError:
        raise PydanticCustomError("timestamp", "outside the years 1 to 9999 in UTC") from None
    return raw


# --- Payload models -------------------------------------------------------------------
# Strict: JSON gives us real booleans and integers, so "true", 1 or "5" is a producer bug
# to refuse, not something to guess about. Unknown fields are ignored so the PMP can add
# some without breaking us.


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


_Id = Annotated[str, Field(min_length=1)]
# Tenants and people name Redis keys and records: bounded, so no id can make a key or a
# record of any size (docs/mappings.md#what-each-event-type-propagates).
MAX_ID_LENGTH = 512
_BoundedId = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
_Timestamp = Annotated[str, AfterValidator(_check_timestamp)]


class _PreferenceValue(_Model):
    value: str  # comma-separated ids of the chosen values


class _Purpose(_Model):
    id: _Id
    enabled: bool | None = None
    enabled_li: bool | None = None
    values: dict[str, _PreferenceValue] | None = None


class _Channel(_Model):
    id: _Id
    enabled: bool | None = None


class _Consents(_Model):
    # `vendors` is not modelled: the property grammar has no vendor properties.
    purposes: list[_Purpose] | None = None
    channels: list[_Channel] | None = None

    @field_validator("purposes", "channels")
    @classmethod
    def _ids_unique(cls, items: list[_Purpose] | list[_Channel] | None) -> Any:
        # Two entries for one id would make one property hold two values: refuse rather
        # than pick one.
        seen: set[str] = set()
        for item in items or ():
            if item.id in seen:
                raise PydanticCustomError(
                    "duplicate_id", "duplicate id {id}", {"id": _preview(item.id)}
                )
            seen.add(item.id)
        return items


class _Entity(_Model):
    id: _Id
    organization_id: _BoundedId
    created_at: _Timestamp | None = None
    updated_at: _Timestamp | None = None
    regulation: str | None = None
    consents: _Consents | None = None

    @model_validator(mode="after")
    def _has_timestamp(self) -> _Entity:
        if self.updated_at is None and self.created_at is None:
            raise PydanticCustomError("timestamp", "needs updated_at or created_at")
        return self

    @property
    def timestamp(self) -> str:
        """``updated_at`` as given, else ``created_at``."""
        return self.updated_at or self.created_at  # type: ignore[return-value]


class _EventUser(_Model):
    organization_user_id: _BoundedId


class _ConsentEvent(_Entity):
    """A partial change: only the purposes and channels it names changed."""

    status: Literal["confirmed", "pending_approval"] | None = None
    user: _EventUser

    @property
    def organization_user_id(self) -> str:
        return self.user.organization_user_id


class _User(_Entity):
    """A user's full merged status."""

    organization_user_id: _BoundedId
    version: Annotated[int, Field(ge=0, le=MAX_VERSION)] | None = None


_E = TypeVar("_E", _ConsentEvent, _User)


class _Snapshot(_Model, Generic[_E]):
    entity: _E


class _Change(_Model, Generic[_E]):
    # `source` (what caused the change) is not needed to propagate it, so not validated.
    old_entity: _E
    new_entity: _E


_P = TypeVar("_P", bound=_Model)


class _Envelope(_Model, Generic[_P]):
    type: str
    regulation: str | None = None
    parameters: _P


_ENVELOPES: dict[str, type[_Envelope[Any]]] = {
    "event.created": _Envelope[_Snapshot[_ConsentEvent]],
    "event.updated": _Envelope[_Change[_ConsentEvent]],
    "event.deleted": _Envelope[_Snapshot[_ConsentEvent]],
    "user.created": _Envelope[_Snapshot[_User]],
    "user.updated": _Envelope[_Change[_User]],
    "user.deleted": _Envelope[_Snapshot[_User]],
}


# --- Flat properties ------------------------------------------------------------------

# A name part is separated from the next by "_" or, in some PMP exports, "__".
_SEPARATORS = ("__", "_")
_UNDERSCORES = re.compile("_+")

#: The shapes of the property names (docs/mappings.md), as a config's author reads them.
PROPERTY_SHAPES = (
    "consents_purposes_<P>_enabled",
    "consents_purposes_<P>_enabled_li",
    "consents_purposes_<P>_values_<PREF>_value",
    "consents_purposes_<P>_preferences_<PREF>_values_<V>_enabled",
    "consents_channels_<C>_enabled",
)


def is_property_name(name: str) -> bool:
    """Whether some payload could give ``name`` a value: it has one of the shapes of
    ``PROPERTY_SHAPES``, any separator written ``_`` or ``__`` (exactly what
    ``FlatProperties`` builds). A typo such as ``..._enabld`` is not, and a mapping naming
    it would never have a value.

    Ids may hold any character, "_" included, so a doubled separator next to an id is
    part of some spelling; only the fixed words need their separators checked. Each shape
    is then a few ``find``s from the left (the earliest words leave the most room for the
    ids after them): time linear in the name, where a regular expression with an id
    pattern per part backtracks in cubic time on names such as
    ``consents_purposes_preferences_values_preferences_values_…``.
    """
    for head in ("consents_", "consents__"):
        if name.startswith(head + "purposes_"):
            return _purpose_property(name[len(head) + len("purposes_") :])
        if name.startswith(head + "channels_"):
            return _id_then(name[len(head) + len("channels_") :], "_enabled")
    return False


def _id_then(rest: str, tail: str) -> bool:
    """Whether ``rest`` is an id of at least one character followed by ``tail``."""
    return len(rest) > len(tail) and rest.endswith(tail)


def _purpose_property(rest: str) -> bool:
    """Whether ``rest`` (after ``consents_purposes_``) is ``<P>_enabled``,
    ``<P>_enabled_li``, ``<P>_values_<PREF>_value`` or
    ``<P>_preferences_<PREF>_values_<V>_enabled``, P and V not empty."""
    if _id_then(rest, "_enabled") or _id_then(rest, "_enabled_li"):
        return True
    # PREF may be empty: "_values_" + "" + "_value".
    values = rest.find("_values_", 1)
    if rest.endswith("_value") and -1 < values <= len(rest) - len("_values_") - len("_value"):
        return True
    preferences = rest.find("_preferences_", 1)
    if preferences == -1 or not rest.endswith("_enabled"):
        return False
    values = rest.find("_values_", preferences + len("_preferences_"))
    return values != -1 and values + len("_values_") < len(rest) - len("_enabled")


def _collapsed(name: str) -> str:
    """``name`` with each run of ``_`` as one: all spellings of one property's name
    collapse to the same text, so an index by it finds a spelling in one look-up."""
    # Most names have no "__": the test is much cheaper than a substitution.
    return _UNDERSCORES.sub("_", name) if "__" in name else name


def _spelling_ends(name: str, parts: Sequence[str], start: int = 0) -> list[int]:
    """Where in ``name`` a spelling of ``parts`` (joined by any separators) that begins
    at ``start`` can end. At most two ways per separator: a handful of positions."""
    ends = [start] if name.startswith(parts[0], start) else []
    ends = [end + len(parts[0]) for end in ends]
    for part in parts[1:]:
        ends = [
            after + len(part)
            for end in ends
            for separator in _SEPARATORS
            if name.startswith(separator, end)
            and name.startswith(part, after := end + len(separator))
        ]
        ends = list(dict.fromkeys(ends))
    return ends


def _spells(name: str, parts: Sequence[str]) -> bool:
    """Whether ``name`` is ``parts`` joined by separators, each ``_`` or ``__``."""
    return len(name) in _spelling_ends(name, parts)


def canonical_name(name: str) -> str:
    """The canonical spelling of a mapping's property name (parts joined by single ``_``),
    for looking it up in the state when no payload at hand carries it. Exact for every id
    that does not itself contain ``__``."""
    return name.replace("__", "_")


def _chosen(listed: str) -> frozenset[str]:
    return frozenset(part.strip() for part in listed.split(",")) - {""}


class FlatProperties:
    """The flat property map of one ``consents`` object, with the grammar of docs/mappings.md:

    ===============================================================  ======================
    property                                                         value
    ===============================================================  ======================
    ``consents_purposes_<P>_enabled``                                true / false
    ``consents_purposes_<P>_enabled_li``                             true / false
    ``consents_purposes_<P>_values_<PREF>_value``                    the raw "v1,v2" string
    ``consents_purposes_<P>_preferences_<PREF>_values_<V>_enabled``  is V in that list?
    ``consents_channels_<C>_enabled``                                true / false
    ===============================================================  ======================

    A null or absent choice has no property at all: absent is not false. Any ``_`` between
    two parts may also be written ``__``; ``enabled_li`` is one part (one payload field).

    A look-up costs time linear in the name looked up, whatever the payload's size: the
    other spellings are found through indexes by collapsed name (built at the first
    look-up that needs them), never by trying each property in turn.
    """

    __slots__ = ("_by_collapsed", "_parts", "_preferences", "_values")

    def __init__(self, consents: _Consents | None = None) -> None:
        # canonical name ("_"-joined parts) -> value, and -> parts for the "__" spellings
        self._values: dict[str, Value] = {}
        self._parts: dict[str, tuple[str, ...]] = {}
        # collapsed "consents_purposes_<P>_preferences_<PREF>" -> the (P, PREF) pairs
        # present, to answer "false" for the value ids not chosen
        self._preferences: dict[str, list[tuple[str, str]]] = {}
        self._by_collapsed: dict[str, list[str]] | None = None
        if consents is not None:
            self._collect(consents)

    def _add(self, parts: tuple[str, ...], value: Value) -> None:
        name = "_".join(parts)
        self._values[name] = value
        self._parts[name] = parts

    def _collect(self, consents: _Consents) -> None:
        for purpose in consents.purposes or ():
            base = ("consents", "purposes", purpose.id)
            if purpose.enabled is not None:
                self._add((*base, "enabled"), purpose.enabled)
            if purpose.enabled_li is not None:
                self._add((*base, "enabled_li"), purpose.enabled_li)
            # Preference values stand on their own: they count even when enabled is null.
            for preference, listed in (purpose.values or {}).items():
                self._add((*base, "values", preference, "value"), listed.value)
                # As the part of a collapsed name before "_values_", which never ends in "_".
                head = _collapsed("_".join((*base, "preferences", preference))).rstrip("_")
                self._preferences.setdefault(head, []).append((purpose.id, preference))
                for value in _chosen(listed.value):
                    self._add((*base, "preferences", preference, "values", value, "enabled"), True)
        for channel in consents.channels or ():
            if channel.enabled is not None:
                self._add(("consents", "channels", channel.id, "enabled"), channel.enabled)

    def get(self, name: str) -> tuple[str, Value] | None:
        """The canonical name and value a mapping's property name stands for, or ``None``
        when this payload carries no value for it."""
        value = self._values.get(name)
        if value is not None:
            return name, value
        # Only a name with "__" can be another spelling of a property we hold: with single
        # "_" separators it would have been the canonical name, found above.
        if "__" in name:
            if self._by_collapsed is None:
                self._by_collapsed = {}
                for canonical in self._values:
                    self._by_collapsed.setdefault(_collapsed(canonical), []).append(canonical)
            # More than one only for ids that differ in their runs of "_" alone.
            for canonical in self._by_collapsed.get(_collapsed(name), ()):
                if _spells(name, self._parts[canonical]):
                    return canonical, self._values[canonical]
        return self._preference_value(name)

    def _preference_value(self, name: str) -> tuple[str, Value] | None:
        # The chosen value ids are stored properties, found by `get` before it comes here;
        # any other value id of a preference the payload carries is a plain "no".
        if not self._preferences:
            return None
        collapsed = _collapsed(name)
        if not collapsed.endswith("_enabled"):
            return None
        # The preference's head ends where some "_values_" begins: a few places to try.
        at = collapsed.find("_values_")
        while at != -1:
            for purpose, preference in self._preferences.get(collapsed[:at], ()):
                value_id = _unchosen_value(name, purpose, preference)
                if value_id is not None:
                    parts = ("consents", "purposes", purpose, "preferences", preference)
                    return "_".join((*parts, "values", value_id, "enabled")), False
            at = collapsed.find("_values_", at + 1)
        return None

    def items(self) -> Iterator[tuple[str, Value]]:
        """Every property with a value, by canonical name. Preference values that were not
        chosen are not listed: there are infinitely many of them."""
        return iter(self._values.items())

    def __repr__(self) -> str:
        return f"FlatProperties({self._values!r})"


def _unchosen_value(name: str, purpose: str, preference: str) -> str | None:
    """The ``V`` of ``name`` when it spells ``consents_purposes_<purpose>_preferences_
    <preference>_values_<V>_enabled``, else None. Where separators leave a choice, V is
    the shortest id: its own leading and trailing "_" are read as separators."""
    head = ("consents", "purposes", purpose, "preferences", preference, "values")
    if not name.endswith("enabled"):
        return None
    tail_end = len(name) - len("enabled")
    for end in sorted(_spelling_ends(name, head), reverse=True):
        for before in _SEPARATORS:
            if not name.startswith(before, end):
                continue
            for after in _SEPARATORS:
                first, last = end + len(before), tail_end - len(after)
                if first < last and name.startswith(after, last):
                    return name[first:last]
    return None


# --- Events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreferenceEvent:
    type: str
    tenant: str  # organization_id
    user: str  # organization_user_id: the key destinations know the person by
    entity_id: str
    event_key: str  # f"{type}:{entity id}:{updated_at}": one payload, one key
    ordering: OrderingKey
    status: str  # "confirmed" | "pending_approval"
    regulation: str | None  # the entity's, else the envelope's; None reaches every connector
    skip_reason: SkipReason | None  # set when the event is not propagated at all
    #: the consents this event carries (the entity's, or new_entity's for *.updated)
    properties: FlatProperties = field(default_factory=FlatProperties, compare=False)
    #: old_entity's consents, for user.updated only: unchanged values are not re-sent
    previous: FlatProperties | None = field(default=None, compare=False)

    @property
    def erasure(self) -> bool:
        """Whether this event asks to erase the person (``user.deleted``): it propagates no
        property; each connector's ``on_user_deleted`` says what it does."""
        return self.type == ERASURE

    def resolve(self, name: str) -> tuple[str, Value] | None:
        """What this event propagates for a mapping's property name: ``(canonical name,
        value)``, or ``None`` when it propagates nothing for it."""
        if self.skip_reason is not None or self.erasure:
            return None
        found = self.properties.get(name)
        if found is None or self.previous is None:
            return found
        # Re-sending an unchanged value would undo a change made in the destination since
        # (an unsubscribe from an email footer, say).
        before = self.previous.get(name)
        if before is not None and before[1] == found[1]:
            return None
        return found


def parse_event(payload: object, *, max_bytes: int | None = None) -> PreferenceEvent:
    """Validate a webhook payload and turn it into a ``PreferenceEvent``.

    Raises ``InvalidEvent``, with a one-line message naming the field, for anything that
    cannot be propagated safely.
    """
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"event must be a JSON object, not {type(payload).__name__}")
    # Encoded even without a limit: what cannot be JSON in UTF-8 cannot be carried, stored
    # or recorded (a dead letter's event key goes to Redis), whatever its size.
    encoded = _encoded(payload)
    size = len(encoded)
    if max_bytes is not None and size > max_bytes:
        raise EventTooLarge(f"event is {size} bytes, larger than the limit of {max_bytes}")
    # Nesting needs one bracket per level: with fewer brackets in all than the limit (as
    # in any ordinary event), the walk over the tree can be skipped.
    if encoded.count(b"{") + encoded.count(b"[") > MAX_DEPTH and _depth(payload) > MAX_DEPTH:
        raise InvalidEvent(_TOO_DEEP)

    if "type" not in payload:
        raise InvalidEvent("type: field required")
    event_type = payload["type"]
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(
            f"type: must be one of {', '.join(EVENT_TYPES)} (got {_preview(event_type)})"
        )
    try:
        envelope = _ENVELOPES[event_type].model_validate(payload)
    except ValidationError as exc:
        problems = describe(exc, _dotted, _quoted, at_most=_MAX_ERRORS_SHOWN)
        raise InvalidEvent("; ".join(problems)) from None

    parameters = envelope.parameters
    previous: FlatProperties | None = None
    if event_type in _CHANGE_TYPES:
        _check_same_person(parameters.old_entity, parameters.new_entity)
        entity = parameters.new_entity
        # A consent event's update replaces the event, so only new_entity matters; a
        # user's update is propagated as the difference from old_entity.
        if event_type == "user.updated":
            previous = FlatProperties(parameters.old_entity.consents)
    else:
        entity = parameters.entity

    is_consent_event = isinstance(entity, _ConsentEvent)
    status = (entity.status if is_consent_event else None) or CONFIRMED
    if event_type in _NOT_PROPAGATED:
        skip_reason: SkipReason | None = SkipReason.UNSUPPORTED_TYPE
    elif status == PENDING_APPROVAL:
        skip_reason = SkipReason.PENDING
    else:
        skip_reason = None

    return PreferenceEvent(
        type=event_type,
        tenant=entity.organization_id,
        user=entity.organization_user_id,
        entity_id=entity.id,
        event_key=f"{event_type}:{entity.id}:{entity.timestamp}",
        ordering=OrderingKey(
            timestamp_us=_timestamp_us(entity.timestamp),
            version=None if is_consent_event else entity.version,
        ),
        status=status,
        regulation=entity.regulation or envelope.regulation,
        skip_reason=skip_reason,
        properties=FlatProperties(entity.consents),
        previous=previous,
    )


def refuse_future(event: PreferenceEvent, now: float, max_skew: float) -> None:
    """Raise ``InvalidEvent`` when ``event`` is dated more than ``max_skew`` seconds after
    ``now`` (Redis's clock): the future is not newer, and a mis-dated event would outrank
    every later change of the person (docs/delivery.md, "The future is not newer")."""
    ahead = event.ordering.timestamp_us / 1e6 - now
    if ahead > max_skew:
        moment = (_EPOCH + event.ordering.timestamp_us * _MICROSECOND).isoformat()
        raise InvalidEvent(
            f"updated_at: {moment} is {ahead:,.0f} s ahead of the clock, more than "
            f"PREFSYNC_MAX_CLOCK_SKEW ({max_skew:g} s): a mis-dated event would outrank "
            "every later change of this person"
        )


def _check_same_person(old: _ConsentEvent | _User, new: _ConsentEvent | _User) -> None:
    # A change that moves between people or organizations cannot be a real update, and
    # propagating it would write one person's choices onto another.
    if isinstance(new, _ConsentEvent):
        user_field = "user.organization_user_id"
    else:
        user_field = "organization_user_id"
    if old.organization_id != new.organization_id:
        raise InvalidEvent(
            "parameters.new_entity.organization_id: differs from parameters.old_entity's"
        )
    if old.organization_user_id != new.organization_user_id:
        # The ids are personal data (often an email): name the field, not the values.
        raise InvalidEvent(
            f"parameters.new_entity.{user_field}: differs from parameters.old_entity's"
        )


# --- Messages -------------------------------------------------------------------------

_MAX_ERRORS_SHOWN = 3
_MAX_PREVIEW = 60

#: A PMP payload nests about 8 levels. A fixed limit, well above that, refuses a deeper
#: one the same way everywhere: left to Python's recursion limit, whether it passed
#: would depend on how deep the stack of the caller (producer, worker) already was.
MAX_DEPTH = 64
_TOO_DEEP = f"event is nested deeper than {MAX_DEPTH} levels"


def is_utf8(text: str) -> bool:
    """Whether ``text`` has a UTF-8 form (Redis takes nothing else): a lone surrogate, as
    JSON's "\\ud800" decodes to, has none."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# NaN and Infinity are not JSON: the dead-letter store would keep them as null. Built once:
# json.dumps with options builds a new encoder at every call.
_encode_compact = json.JSONEncoder(
    separators=(",", ":"), ensure_ascii=False, allow_nan=False
).encode


def _encoded(payload: Mapping[str, Any]) -> bytes:
    """``payload`` as compact UTF-8 JSON, as it is carried and stored."""
    try:
        return _encode_compact(payload).encode("utf-8")
    except RecursionError:
        raise InvalidEvent(_TOO_DEEP) from None
    except UnicodeEncodeError:
        # A lone surrogate ("\ud800" in JSON) has no UTF-8 form: Redis could not store it.
        raise InvalidEvent(
            "event is not JSON-encodable: a string holds a lone surrogate, which is not UTF-8"
        ) from None
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"event is not JSON-encodable: {exc}") from None


def _depth(payload: Mapping[str, Any]) -> int:
    """How many objects and lists deep ``payload`` goes; it is JSON-encodable, so a tree.
    Iterative, so that a deep one cannot exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, Mapping):
            children: Any = value.values()
        elif isinstance(value, list | tuple):
            children = value
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _preview(value: object) -> str:
    """A short description of an input, so a huge payload never ends up in a message."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= _MAX_PREVIEW else text[: _MAX_PREVIEW - 1] + "…"


def _loc_part(part: int | str) -> str:
    # A location can be a key of the payload (a preference id): a line break or a huge
    # key would break the one-line message, so such a key is shown as a short repr.
    text = str(part)
    return text if len(text) <= _MAX_PREVIEW and text.isprintable() else _preview(text)


def _dotted(loc: Location) -> str:
    """Where a pydantic error is, e.g. ``parameters.entity.organization_id``."""
    return ".".join(_loc_part(part) for part in loc if part != "")


def _quoted(error: ErrorDetails) -> str:
    """A pydantic error's message, with a short preview of the input it refused."""
    message = error["msg"][:1].lower() + error["msg"][1:]
    if error["type"] != "missing":
        message += f" (got {_preview(error['input'])})"
    return message
