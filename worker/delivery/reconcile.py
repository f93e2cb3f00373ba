"""Reconcile: what a tool holds for some people against what prefsync's state says it
should hold (docs/two-way-consent.md#reconcile-prove-a-tool-agrees).

``expected`` turns a person's newest known values into the fields the connector's own
mappings write (fed fields computed from the whole state, as a delivery computes them);
``compare`` sets them against what the tool answered (``Connector.read``), field by field,
by the tool's own names. Both are plain functions. ``Reconciler`` reads the tool for a
list of people, paced on a bucket of its own under the tool's read limit and retried as a
delivery is, and returns the drift.

A refusal the tool holds that prefsync never heard of, on a connector that listens
(``bidirectional``), is a missed signal: the person refused in the tool and the signal
did not reach prefsync. It is reported as such and never corrected: correcting it would
undo the person's refusal.

A correction (``fix_for``) is the very events the drifted fields' values came from, sent
again to the one connector: each ``correction`` payload has its event's key and ordering,
so it owns those properties again and outranks nothing newer. The connector is first made
to forget it was told them (``StateStore.untell``), or the delivery would find them told.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from worker.connectors.base import BaseTransport, Change, feeds
from worker.connectors.model import ConnectorConfig
from worker.core.errors import Deferred, DeliveryError, InvalidEvent, PermanentError, RetryableError
from worker.core.events import Value, canonical_name, parse_event
from worker.core.retries import retry_countdown
from worker.core.signals import Signal
from worker.delivery.deliverer import fed_state
from worker.delivery.pacing import PacedTransport, Pacer, account_key
from worker.records.person import Known

DRIFT = "drift"
MISSED_SIGNAL = "missed-signal"
#: The longest a read sleeps for its slot before it is deferred (and tried again): the
#: command has no worker process to free, so it waits for the tool's limit.
_READ_MAX_SLEEP = 60.0


@dataclass(frozen=True, slots=True)
class Drift:
    """One field of one person where the tool disagrees with prefsync."""

    user: str
    field: str  # the tool's own name: email_subscribe, a group id, emailBlacklisted...
    expected: Any
    found: Any  # None: the tool does not hold it (or does not know the person)
    kind: str = DRIFT

    def as_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "field": self.field,
            "expected": self.expected,
            "found": self.found,
            "kind": self.kind,
        }


def expected(config: ConnectorConfig, current: Mapping[str, Value]) -> dict[str, Any]:
    """What ``config``'s tool should hold for a person whose newest known values are
    ``current`` (canonical name -> value), by the tool's own field names. Raises
    ``PermanentError`` when a fed field's property holds text (as a delivery would)."""
    values = {
        mapping.value: current[canonical_name(mapping.value)]
        for mapping in config.mappings
        if canonical_name(mapping.value) in current
    }
    change = Change("", values, fed_state(config, current))
    return config.connector.written_fields(config, change)


def compare(
    config: ConnectorConfig,
    user: str,
    wanted: Mapping[str, Any],
    held: Mapping[str, Any] | None,
) -> list[Drift]:
    """Each field of ``wanted`` (``expected``) that ``held`` (what the tool answered;
    None when it does not know the person) disagrees with, in field order.

    A person the tool does not know drifts only when prefsync would create them (upsert
    mode). A field at the tool's ``no_decision`` value in ``wanted`` is no decision: the
    tool may hold anything there, but a refusal there on a bidirectional connector is a
    missed signal. Both sides are compared as the tool acts on them (``effective``: a
    Braze global email unsubscribe outranks every group)."""
    connector = config.connector
    if held is None:
        if not config.upsert_mode:
            return []
        return [Drift(user, name, value, None) for name, value in sorted(wanted.items())]
    refusal = {feed.field: feed.strongest_first[0] for _, feed in feeds(config) if feed}
    want = connector.effective(wanted)
    found_all = connector.effective(held)
    drifts: list[Drift] = []
    for name in sorted(want):
        value, found = want[name], found_all.get(name)
        refused_there = name in refusal and found == refusal[name] and value != found
        missed = config.bidirectional and refused_there
        if connector.no_decision.get(name, object()) == value and not missed:
            continue
        if found != value:
            drifts.append(Drift(user, name, value, found, MISSED_SIGNAL if missed else DRIFT))
    return drifts


def missed_signal(config: ConnectorConfig, drift: Drift, found_at: datetime) -> Signal:
    """A missed signal as the signal the tool did not send: the refusal of the drift's
    field by its person, dated when reconcile found it (when the person refused is not
    known; a later date keeps the refusal against PMP events that arrive late). Its
    dedup is the same while prefsync expects the same, so a reconcile run again stores
    it once."""
    return Signal(
        connector_id=config.id,
        source="braze" if config.type_id == "braze" else "brevo",
        field=drift.field,
        kind="unsubscribed",
        user=drift.user,
        at=found_at,
        dedup=json.dumps(["reconcile", drift.user, drift.field, drift.expected]),
    )


@dataclass
class Reconciled:
    """What one run found: people checked, drift, and the people whose tool or state
    could not be read (with why)."""

    checked: int = 0
    drifted: list[Drift] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)


class Reconciler:
    """Reads a tool for people and compares."""

    def __init__(
        self,
        transport: BaseTransport,
        pacer: Pacer,
        *,
        countdowns: tuple[float, ...],
        jitter: float,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.transport = transport
        self.pacer = pacer
        self.countdowns = countdowns
        self.jitter = jitter
        self.sleep = sleep

    def run(
        self,
        config: ConnectorConfig,
        users: Sequence[str],
        current: Callable[[str], Mapping[str, Value]],
    ) -> Reconciled:
        """Compare the tool with ``current(user)``, a person's newest known values
        (canonical name -> value) in prefsync's state, for each of ``users``. A person
        prefsync knows nothing of is checked and expected to hold nothing."""
        result = Reconciled()
        wanted: dict[str, dict[str, Any]] = {}
        for user in dict.fromkeys(users):
            result.checked += 1
            try:
                fields = expected(config, current(user))
            except PermanentError as exc:  # the config maps the wrong property
                result.unreadable[user] = str(exc)
                continue
            if fields:
                wanted[user] = fields
        people = list(wanted)
        size = config.connector.read_batch
        for start in range(0, len(people), size):
            batch = people[start : start + size]
            try:
                held = self._read(config, batch)
            except (DeliveryError, Deferred) as exc:
                result.unreadable |= dict.fromkeys(batch, str(exc))
                continue
            for user in batch:
                result.drifted += compare(config, user, wanted[user], held.get(user))
        return result

    def _read(
        self, config: ConnectorConfig, users: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """``Connector.read``, paced on the tool's read bucket (apart from deliveries),
        retried at the deliveries' offsets; the last error when every try failed."""
        connector = config.connector
        bucket = account_key(f"{config.type_id}:read", config.credentials)
        first = time.time()
        for retries_done in range(len(self.countdowns) + 1):
            paced = PacedTransport(
                self.transport,
                self.pacer,
                bucket,
                connector.read_rate,
                connector.quota,
                _READ_MAX_SLEEP,
            )
            try:
                return connector.read(paced, config, users)
            except Deferred as exc:
                wait: float | None = exc.wait
                error: RetryableError | Deferred = exc
            except RetryableError as exc:
                wait, error = exc.retry_after, exc
            if retries_done == len(self.countdowns):
                break
            self.sleep(
                retry_countdown(
                    retries_done=retries_done,
                    first_attempt_at=first,
                    now=time.time(),
                    countdowns=self.countdowns,
                    jitter=self.jitter,
                    retry_after=wait,
                )
            )
        raise error


#: An event key: ``{type}:{entity id}:{timestamp}`` (the id may hold ":", the time does).
_EVENT_KEY = re.compile(r"(?P<type>[a-z]+\.[a-z]+):(?P<id>.+):(?P<at>\d{4}-\d\d-\d\dT.+)")
_CORRECTABLE = ("event.created", "event.updated", "user.created", "user.updated")
#: Property shapes a payload can carry, most specific first: (pattern, where it goes).
_SHAPES = (
    (re.compile(r"consents_purposes_(?P<id>.+?)_values_(?P<pref>.+)_value"), "value"),
    (re.compile(r"consents_purposes_(?P<id>.+)_enabled_li"), "enabled_li"),
    (re.compile(r"consents_purposes_(?P<id>.+)_enabled"), "enabled"),
    (re.compile(r"consents_channels_(?P<id>.+)_enabled"), "channel"),
)


@dataclass(frozen=True, slots=True)
class Fix:
    """What corrects one person's drift: the properties and fed fields the connector is
    made to forget it was told, and the events sent again."""

    properties: list[str]
    fields: list[str]
    payloads: list[dict[str, Any]]


def fix_for(
    config: ConnectorConfig,
    tenant: str,
    user: str,
    drifts: Sequence[Drift],
    known: Mapping[str, Known],
) -> Fix | None:
    """The correction of ``drifts`` (one person's; missed signals left out by the caller)
    from ``known`` (prefsync's state of them), or None when an event cannot be written
    again as a payload (then nothing is corrected for the person)."""
    wanted = {drift.field for drift in drifts}
    fed = {feed.field for _, feed in feeds(config) if feed is not None}
    properties: set[str] = set()
    for mapping, feed in feeds(config):
        canonical = canonical_name(mapping.value)
        if canonical not in known:
            continue
        if feed is not None:
            names = {feed.field}
        else:
            change = Change("", {mapping.value: known[canonical].value})
            names = set(config.connector.written_fields(config, change))
        if names & wanted:
            properties.add(canonical)
    by_event: dict[str, dict[str, Known]] = {}
    for canonical in properties:
        by_event.setdefault(known[canonical].event_key, {})[canonical] = known[canonical]
    payloads = []
    for event_key, items in sorted(by_event.items()):
        values = {name: item.value for name, item in items.items()}
        versions = {item.version for item in items.values()}
        payload = correction(tenant, user, event_key, values, versions.pop())
        if payload is None:
            return None
        payloads.append(payload)
    return Fix(sorted(properties), sorted(wanted & fed), payloads) if payloads else None


def correction(
    tenant: str, user: str, event_key: str, values: Mapping[str, Value], version: int | None
) -> dict[str, Any] | None:
    """A PMP payload of the event ``event_key`` names, carrying ``values`` (canonical name
    -> the value that event gave): read back, it has that event's key and ordering and
    exactly those values. None when it cannot be written so (a shape not handled)."""
    match = _EVENT_KEY.fullmatch(event_key)
    consents = _consents(values)
    if match is None or match["type"] not in _CORRECTABLE or consents is None:
        return None
    kind = match["type"]
    entity: dict[str, Any] = {
        "id": match["id"],
        "organization_id": tenant,
        "updated_at": match["at"],
        "consents": consents,
    }
    if kind.startswith("event."):
        entity |= {"status": "confirmed", "user": {"organization_user_id": user}}
    else:
        entity |= {"organization_user_id": user}
        entity |= {"version": version} if version is not None else {}
    changed = {"old_entity": entity | {"consents": {}}, "new_entity": entity}
    payload = {
        "type": kind,
        "parameters": changed if kind.endswith(".updated") else {"entity": entity},
    }
    try:
        event = parse_event(payload)
    except InvalidEvent:
        return None
    if event.event_key != event_key or event.user != user:
        return None
    if any(event.resolve(name) != (name, value) for name, value in values.items()):
        return None
    return payload


def _consents(values: Mapping[str, Value]) -> dict[str, Any] | None:
    purposes: dict[str, dict[str, Any]] = {}
    channels: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        for pattern, place in _SHAPES:
            if (match := pattern.fullmatch(name)) is None:
                continue
            if place == "channel":
                channels[match["id"]] = {"id": match["id"], "enabled": value}
            else:
                purpose = purposes.setdefault(match["id"], {"id": match["id"]})
                if place == "value":
                    purpose.setdefault("values", {})[match["pref"]] = {"value": value}
                else:
                    purpose[place] = value
            break
        else:
            return None
    return {"purposes": list(purposes.values()), "channels": list(channels.values())}
