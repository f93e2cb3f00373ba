"""Reconcile: what a tool holds for some people against what prefsync's state says it
should hold (docs/two-way.md#reconcile-prove-a-tool-agrees).

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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.connectors.base import BaseTransport, Change, feeds
from worker.connectors.model import ConnectorConfig
from worker.core.errors import Deferred, DeliveryError, PermanentError, RetryableError
from worker.core.events import Value, canonical_name
from worker.core.retries import retry_countdown
from worker.delivery.deliverer import fed_state
from worker.delivery.pacing import PacedTransport, Pacer, account_key

DRIFT = "drift"
MISSED_SIGNAL = "missed-signal"


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
                self.transport, self.pacer, bucket, connector.read_rate, connector.quota, 60.0
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
