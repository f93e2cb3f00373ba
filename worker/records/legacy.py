"""The records the release before this one wrote, still read after an upgrade for as long
as they can live, and folded into the person's record (worker.records.person) as each
person is claimed (lua/legacy.lua).

That release kept, per person, a hash of the state (property -> "timestamp_us, version,
value JSON, event key", tab-separated), a tombstone key, per connector a hash of the values
last delivered and a sorted set of the refs of the events done (scored by their expiry);
the release before it, a done marker per event named by the event key alone. Their key
formats are kept exactly: an upgrade reads what those releases wrote.

Delete this module and lua/legacy.lua (and what worker.records.state passes them) once
every deployment has run this release for longer than PREFSYNC_STATE_TTL (default 90 days,
worker/infra/settings.py; the done markers go sooner, after PREFSYNC_IDEMPOTENCY_TTL,
default 7 days): from then on ``live`` answers (False, False). With the default TTL and
every deployment upgraded by 2027-04-01, that is after 2027-06-30.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import redis

from worker.core.retries import clock
from worker.records.keys import key, text
from worker.records.person import Known

#: Where this release notes when it first ran against a Redis an older release had
#: written to ("0": it never had); older records are read until they expire.
FORMAT = "prefsync:state-format"
#: Written by every older release (its outcome counters): that one existed.
_OLDER_TRACE = "prefsync:stats"


class PreviousRelease:
    """What the release before this one left in a Redis: whether it may still live, its
    key names, and its values where this release answers from the person's record."""

    def __init__(self, client: redis.Redis, *, state_ttl: int, idempotency_ttl: int) -> None:
        self.redis = client
        self.state_ttl = state_ttl
        self.idempotency_ttl = idempotency_ttl
        self._since: float | None = None

    def live(self) -> tuple[bool, bool]:
        """Whether its records may still live: (its state, values delivered and
        tombstones, for up to the state TTL after the upgrade; its done markers, for up to
        the idempotency TTL). Decided by the first process of this release to ask, from
        whether an older release ever counted an outcome here, so ask before recording
        anything (``Deliverer.deliver`` does, through ``StateStore.older``)."""
        if self._since is None:
            since = self.redis.get(FORMAT)
            if since is None:
                trace = self.redis.exists(_OLDER_TRACE)
                self.redis.set(FORMAT, repr(clock()) if trace else "0", nx=True)
                since = self.redis.get(FORMAT)
            self._since = float(since or 0)
        if not self._since:
            return False, False
        now = clock()
        return now < self._since + self.state_ttl, now < self._since + self.idempotency_ttl

    # -- key names ------------------------------------------------------------------------

    def claim_keys(self, tenant: str, connector_id: str, person: str) -> list[str]:
        """The keys lua/legacy.lua folds in or reads when the person is claimed for the
        connector: state hash, tombstone, values delivered, done refs."""
        return [
            key("state", tenant, person),
            self.tombstone(tenant, person),
            key("sent", tenant, connector_id, person),
            key("dones", tenant, connector_id, person),
        ]

    def tombstone(self, tenant: str, person: str) -> str:
        return key("erased", tenant, person)

    def done_marker(self, tenant: str, connector_id: str, event_key: str) -> str:
        """An event's done marker as two releases ago wrote it (named by the event key
        alone), still read until it expires so that an upgrade does not send a week of
        events again."""
        return key("done", tenant, connector_id, event_key)

    def forgotten(
        self, tenant: str, person: str, connector_ids: Iterable[str], *, done: bool
    ) -> list[str]:
        """The keys that go when the person is forgotten: the state and the values
        delivered to each connector, and with ``done`` the refs of the events done."""
        names = [key("state", tenant, person)]
        for connector_id in connector_ids:
            names.append(key("sent", tenant, connector_id, person))
            if done:
                names.append(key("dones", tenant, connector_id, person))
        return names

    # -- read where the person's record is read (not folded in until they are claimed) ----

    def known(self, tenant: str, person: str) -> dict[str, Known]:
        if not self.live()[0]:
            return {}
        raw = self.redis.hgetall(key("state", tenant, person))
        return {text(name): Known.of(*text(entry).split("\t", 3)) for name, entry in raw.items()}

    def delivered(self, tenant: str, connector_id: str, person: str) -> dict[str, Any]:
        if not self.live()[0]:
            return {}
        raw = self.redis.hgetall(key("sent", tenant, connector_id, person))
        return {text(name): json.loads(value) for name, value in raw.items()}

    def erased_at(self, tenant: str, person: str) -> int | None:
        if not self.live()[0]:
            return None
        raw = self.redis.get(self.tombstone(tenant, person))
        return None if raw is None else int(raw)

    def is_done(
        self, tenant: str, connector_id: str, person: str, ref: str, event_key: str
    ) -> bool:
        """Whether it marked the event done for the connector (``ref``: its whole ref)."""
        if not self.live()[1]:
            return False
        score = self.redis.zscore(key("dones", tenant, connector_id, person), ref)
        if score is not None and score > clock():
            return True
        return bool(self.redis.exists(self.done_marker(tenant, connector_id, event_key)))
