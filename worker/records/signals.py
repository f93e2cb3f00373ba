"""What the ingress's signals route keeps and reads in Redis (docs/two-way-consent.md): which
connectors take signals, and the inbox of signals received.

- ``prefsync:signals:connectors:{tenant}``: a hash, field = connector id, value =
  ``{"type_id", "bidirectional"}`` as JSON, written with the config in the same
  transaction (worker.records.configs). It holds no credential, so the ingress reads it
  without the keys that open configs. A config stored by a release before this one is not
  in it until stored again (which ``bidirectional: true`` needs anyway).
- ``prefsync:signals:inbox``: a list of received refusals, each ``{"tenant", "id",
  "signal", "received_at"}``, stored before the tool is answered ``202``.
- ``prefsync:signals:processing``: the entries a worker took from the inbox and is acting
  on (``SignalInbox.take``): moved there atomically, removed once their work is enqueued,
  put back in the inbox by ``recover`` when a worker died holding them.
- ``prefsync:signals:seen:{id}``: a marker per signal id, kept ``SEEN_TTL``: a copy of
  a signal received again in that time (a tool's retry, Currents' at-least-once
  delivery) is dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from worker.core.signals import Signal
from worker.records.scripts import Scripts

if TYPE_CHECKING:
    from redis import Redis

    from worker.connectors.model import ConnectorConfig

ROUTES_PREFIX = "prefsync:signals:connectors:"
INBOX = "prefsync:signals:inbox"
PROCESSING = "prefsync:signals:processing"
SEEN_PREFIX = "prefsync:signals:seen:"
#: Brevo retries a webhook for about 11 hours, Braze for 30 minutes; a week covers both
#: and Currents' redeliveries with room to spare.
SEEN_TTL = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Route:
    """What the signals route needs of a connector."""

    type_id: str
    bidirectional: bool


def routes_key(tenant: str) -> str:
    return f"{ROUTES_PREFIX}{tenant}"


def route_of(config: ConnectorConfig) -> str:
    """The routes hash's value for ``config``."""
    return json.dumps({"type_id": config.type_id, "bidirectional": config.bidirectional})


def bidirectional(redis: Redis, tenant: str) -> list[str]:
    """The ids of the tenant's connectors whose ``bidirectional`` is on, sorted."""
    return sorted(
        (field.decode() if isinstance(field, bytes) else field)
        for field, raw in redis.hgetall(routes_key(tenant)).items()
        if json.loads(raw)["bidirectional"]
    )


class SignalInbox:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.scripts = Scripts(redis)

    def route(self, tenant: str, connector_id: str) -> Route | None:
        """The tenant's connector of that id as the route sees it; None when unknown."""
        raw = self.redis.hget(routes_key(tenant), connector_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return Route(str(data["type_id"]), bool(data["bidirectional"]))

    def store(self, tenant: str, signals: list[Signal], received_at: datetime) -> int:
        """Append the signals not received before to the inbox, in one step; how many
        were new. Raises Redis's errors: then nothing was stored."""
        if not signals:
            return 0
        entries: dict[str, str] = {}
        for signal in signals:
            signal_id = signal.key(tenant)
            entries[signal_id] = json.dumps(
                {
                    "tenant": tenant,
                    "id": signal_id,
                    "signal": signal.model_dump(mode="json"),
                    "received_at": received_at.isoformat(),
                }
            )
        keys = [INBOX, *(f"{SEEN_PREFIX}{signal_id}" for signal_id in entries)]
        return int(self.scripts.run("signals_inbox", keys, [SEEN_TTL, *entries.values()]))

    def take(self) -> bytes | None:
        """The oldest entry of the inbox, moved to the processing list in one step (so a
        worker that dies holding it loses nothing); None when the inbox is empty."""
        return self.redis.lmove(INBOX, PROCESSING, "LEFT", "RIGHT")

    def done(self, entry: bytes) -> None:
        """``entry``'s work is enqueued: it leaves the processing list."""
        self.redis.lrem(PROCESSING, 1, entry)

    def put_back(self, entry: bytes) -> None:
        """``entry`` could not be acted on now (a tool or Redis away): back to the front of
        the inbox, in one transaction, for the next round."""
        with self.redis.pipeline() as pipe:
            pipe.lrem(PROCESSING, 1, entry)
            pipe.lpush(INBOX, entry)
            pipe.execute()

    def recover(self) -> int:
        """Put every entry of the processing list back in the inbox (at a worker's start:
        what a worker that died left there); how many. An entry another worker is acting
        on at that moment is acted on twice, which the rest makes harmless (the events and
        the PMP's consent event are named after the signal)."""
        moved = 0
        while self.redis.lmove(PROCESSING, INBOX, "RIGHT", "LEFT") is not None:
            moved += 1
        return moved
