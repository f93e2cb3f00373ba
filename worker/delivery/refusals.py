"""Acting on the refusals the tools reported (docs/two-way-consent.md#what-a-refusal-does).

``SignalDrain`` takes each stored signal from the inbox (worker.records.signals) and turns
it into the PMP's own kind of event, an ``event.created`` consent event of the person
dated at the refusal, named after the signal. The queue publishes it like any event, with
the connector the signal came from as its ``origin``: the person's state takes it
newest-wins, every other connector of the tenant is told, the origin is recorded as
already holding it, and the pseudo-connector ``PMP`` writes it to the PMP (``tell_pmp``),
a delivery like any other (retries, dead letters, audit, metrics).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import redis
import structlog
from kombu.exceptions import OperationalError
from pydantic import ValidationError

from worker.connectors.model import ConnectorConfig
from worker.connectors.pmp import ConsentEvent
from worker.connectors.refusals import (
    consent_event,
    consent_event_of,
    event_payload,
    refused_values,
)
from worker.connectors.sendinblue import SendinblueConnector
from worker.core.errors import (
    Deferred,
    InvalidConfig,
    PermanentError,
    PrefsyncError,
    RetryableError,
)
from worker.core.events import PreferenceEvent
from worker.core.outcomes import Outcome, OutcomeKind, SkipReason
from worker.core.signals import Signal
from worker.delivery.deliverer import Unfinished
from worker.delivery.runtime import Runtime
from worker.records.recorder import Ended
from worker.records.signals import SignalInbox

log = structlog.get_logger("prefsync.refusals")

#: the connector id of the PMP as a destination of refusals: ``@`` is in no connector id
#: (worker.connectors.model), so no tenant's connector can be taken for it
PMP = "@pmp"
#: entries one drain round takes at most: the timer's other work is not kept waiting
ROUND = 100
#: the regulation of a refusal's event when the tenant has no PMP credentials any more
_REGULATION = "gdpr"

#: what makes an entry wait for the next round: a tool, Redis or the broker away
_LATER = (RetryableError, Deferred, redis.exceptions.RedisError, OperationalError)

#: publishes a refusal's payload with its origin connector (worker.queue.sweeps)
Publish = Callable[[dict[str, Any], str], object]


class SignalDrain:
    """Takes the inbox's signals and publishes the event each one means. At least once:
    an entry leaves the processing list only once its event is published, and the event
    and the PMP's consent event are named after the signal, so acting twice is harmless."""

    def __init__(self, rt: Runtime, publish: Publish) -> None:
        self.rt = rt
        self.publish = publish
        self.inbox = SignalInbox(rt.redis)
        #: entries this process took but could not put back (Redis away): put back first
        self.held: list[bytes] = []

    def round(self, limit: int = ROUND) -> int:
        """Act on up to ``limit`` entries; how many were done with (published or dropped).
        Stops at the first that must wait (a tool or the broker away): it goes back to
        the front of the inbox."""
        while self.held:
            self.inbox.put_back(self.held[0])
            del self.held[0]
        finished = 0
        for _ in range(limit):
            entry = self.inbox.take()
            if entry is None:
                break
            try:
                self.act(entry)
            except _LATER as exc:
                log.warning("refusal put back for later", error=f"{type(exc).__name__}: {exc}")
                self._put_back(entry)
                break
            self.inbox.done(entry)
            finished += 1
        return finished

    def _put_back(self, entry: bytes) -> None:
        try:
            self.inbox.put_back(entry)
        except redis.exceptions.RedisError:
            self.held.append(entry)

    def act(self, entry: bytes) -> None:
        """Publish the event ``entry``'s signal means, or drop it saying why."""
        try:
            data = json.loads(entry)
            tenant, signal_id = str(data["tenant"]), str(data["id"])
            signal = Signal.model_validate(data["signal"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            log.error("refusal dropped: not an inbox entry", error=str(exc)[:200])
            return
        bound = log.bind(tenant=tenant, signal_id=signal_id, connector_id=signal.connector_id)
        payload = self.payload(tenant, signal)
        if isinstance(payload, str):
            bound.warning("refusal writes nothing", reason=payload)
            return
        self.publish(payload, signal.connector_id)
        bound.info("refusal enqueued", event_id=payload["parameters"]["entity"]["id"])

    def payload(self, tenant: str, signal: Signal) -> dict[str, Any] | str:
        """The event ``signal`` means for ``tenant``, or why it means none."""
        rt = self.rt
        try:
            config = rt.configs.get(tenant, signal.connector_id)
        except InvalidConfig:
            return "the connector's config no longer opens or validates"
        if config is None:
            return "the connector is gone"
        values = refused_values(config, signal.field)
        if not values:
            return f"no mapping of the connector feeds {signal.field!r}"
        person = self.person(tenant, signal, config)
        if person is None:
            return "the tool names nobody prefsync knows (no ext_id)"
        if rt.state.erased_at(tenant, person) is not None:
            return "the person was erased: a refusal never brings them back"
        try:
            credentials = rt.pmp.get(tenant)
        except InvalidConfig:
            credentials = None
        regulation = credentials.regulation if credentials is not None else _REGULATION
        event = consent_event(tenant, signal, person, values, regulation)
        if event is None:
            return "no purpose's consent feeds the refused field"
        return event_payload(tenant, event)

    def person(self, tenant: str, signal: Signal, config: ConnectorConfig) -> str | None:
        """Who the signal is about: Braze names the person; Brevo names an email, which
        is the person when prefsync knows a person of that id, else the contact's
        ``ext_id``."""
        if not signal.user_is_email or self.rt.state.known(tenant, signal.user):
            return signal.user
        connector = config.connector
        if not isinstance(connector, SendinblueConnector):
            return None
        transport = self.rt.deliverer.paced(config)
        try:
            return connector.contact_ext_id(transport, config, signal.user)
        except PermanentError:
            return None


def tell_pmp(
    rt: Runtime,
    events: Mapping[int, PreferenceEvent],
    payloads: list[Any],
    tenant: str,
    enqueued_at: float | None = None,
) -> Unfinished:
    """Write the consent events of a tenant's refusals (``events`` by their index in
    ``payloads``) to its PMP, in one call; record how each ended. What has not ended comes
    back by index, for the task to retry or dead-letter as any delivery."""
    unfinished: Unfinished = {}
    ended: list[Ended] = []
    writes: dict[int, ConsentEvent] = {}
    for index, event in events.items():
        erased_at = rt.state.erased_at(tenant, event.user)
        if erased_at is not None and event.ordering.timestamp_us <= erased_at:
            outcome = Outcome(OutcomeKind.SKIPPED, reason=str(SkipReason.ERASED))
            ended.append(Ended(event.event_key, event.user, outcome))
            continue
        try:
            writes[index] = consent_event_of(payloads[index])
        except PrefsyncError as exc:
            unfinished[index] = exc
    answers: Counter[int | None] = Counter()
    if writes:
        try:
            credentials = rt.pmp.get(tenant)
            if credentials is None:
                raise PermanentError(
                    f"tenant {tenant!r} has no PMP credentials: store them with `prefsync "
                    "pmp put`, then replay this dead letter"
                )
            status = rt.pmp_client.write_events(credentials, list(writes.values()))
        except PrefsyncError as exc:
            answers[getattr(exc, "status", None)] += 1
            unfinished |= dict.fromkeys(writes, exc)
        else:
            answers[status] += 1
            delivered = Outcome(OutcomeKind.DELIVERED, status=status)
            ended += [Ended(events[i].event_key, events[i].user, delivered) for i in writes]
    rt.recorder.record(
        tenant, PMP, ended, connector_type="pmp", enqueued_at=enqueued_at, answers=answers
    )
    return unfinished
