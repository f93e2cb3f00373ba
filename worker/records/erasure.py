"""A person's erasure in prefsync's own records (docs/erasure.md).

When a ``user.deleted`` is routed (``begin``), the person's tombstone is written — from
then on every event of theirs dated at or before the deletion is skipped as ``erased``
(worker.records.state) — and so is the list of the tenant's connectors whose part is still to come.
Each connector ends its part (delivered, skipped or dead-lettered: ``ended``); the last one
forgets the person: their newest-wins state up to the deletion, the values last delivered
and what each connector was told of the values forgotten, and the dead letters of their
earlier events in that tenant (a replay would undo the erasure). What remains is the
tombstone, named by the keyed hash of the user id, and the one of the casefolded id (where
a destination ignores letter case, every spelling of the id is the erased person), both
expiring with the state TTL, and the audit trail, which names the person by that hash too.

A dead letter of the deletion itself is kept: it is the erasure still owed to that
destination, for an operator to replay once the cause is fixed (a key without the
``users.delete`` permission, say).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import redis
import structlog

from worker.core.errors import InvalidEvent
from worker.core.events import ERASURE, parse_event
from worker.records.deadletter import DeadLetterStore
from worker.records.state import StateStore, key

log = structlog.get_logger("prefsync.erasure")


class Erasures:
    def __init__(
        self,
        client: redis.Redis,
        state: StateStore,
        deadletters: DeadLetterStore,
        connector_ids: Callable[[str], Iterable[str]],
        folded_id: Callable[[str, str, str], str | None] = lambda _t, _c, _u: None,
    ) -> None:
        self.redis = client
        self.state = state
        self.deadletters = deadletters
        self.connector_ids = connector_ids
        #: (tenant, connector, user) -> the user's id as that connector's destination
        #: compares it when it ignores letter case (ConfigStore.folded_id), else None
        self.folded_id = folded_id

    def _pending_key(self, tenant: str, user: str) -> str:
        return key("erasing", tenant, self.state.person(user))

    def begin(
        self, tenant: str, user: str, timestamp_us: int, connector_ids: Iterable[str]
    ) -> None:
        """A person's erasure dated ``timestamp_us`` is about to reach ``connector_ids``
        (every connector of the tenant). With none, the person is forgotten at once."""
        self.state.erase(tenant, user, timestamp_us)
        pending = list(connector_ids)
        if not pending:
            self.forget(tenant, user, timestamp_us)
            return
        name = self._pending_key(tenant, user)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(name, mapping=dict.fromkeys(pending, 1))
            pipe.expire(name, self.state.state_ttl)
            pipe.execute()

    def ended(self, tenant: str, user: str, connector_id: str, timestamp_us: int) -> bool:
        """``connector_id`` ended its part of the erasure dated ``timestamp_us``; when it
        was the last, the person is forgotten (True). Ending again, or without ``begin``
        (a dead letter of the deletion replayed to one connector), forgets again: it is
        harmless and leaves nothing behind."""
        name = self._pending_key(tenant, user)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(name, connector_id)
            pipe.hlen(name)
            _, left = pipe.execute()
        if left:
            return False
        self.forget(tenant, user, timestamp_us)
        return True

    def forget(self, tenant: str, user: str, timestamp_us: int) -> None:
        """Remove what prefsync keeps of the person up to the erasure (its tombstone, if
        later, counts), keeping the tombstone."""
        up_to = max(timestamp_us, self.state.erased_at(tenant, user) or timestamp_us)
        records = self.state.forget_erased(tenant, user, self.connector_ids(tenant), up_to)
        letters = [
            entry
            for entry in self.deadletters.iter(tenant=tenant)
            if self._theirs(tenant, entry.connector_id, entry.user, user)
            and not entry.event_key.startswith(f"{ERASURE}:")
            and _dated_up_to(entry.payload, up_to)
        ]
        for entry in letters:
            self.deadletters.remove(entry.id)
        self.redis.delete(self._pending_key(tenant, user))
        log.info(
            "erasure ended: person forgotten",
            tenant=tenant,
            person=self.state.person(user),
            records=records,
            dead_letters=len(letters),
        )

    def _theirs(self, tenant: str, connector_id: str, named: str, user: str) -> bool:
        """Whether a dead letter naming ``named`` for the connector is of the erased
        ``user``: the same id, or for a destination that ignores letter case (Brevo's email
        addresses) any spelling of it: there it is the same person."""
        if named == user:
            return True
        if named.casefold() != user.casefold():
            return False  # not a spelling of it: no config to read
        return self.folded_id(tenant, connector_id, named) is not None


def _dated_up_to(payload: object, timestamp_us: int) -> bool:
    """Whether a dead letter's event is dated at or before the erasure (one after it is
    a new life's); one that cannot be read counts as before."""
    try:
        return parse_event(payload).ordering.timestamp_us <= timestamp_us
    except InvalidEvent:
        return True


def request(tenant: str, user: str, now: float) -> dict[str, Any]:
    """A ``user.deleted`` payload for an erasure asked of prefsync directly (``prefsync
    erase``), dated ``now`` (Redis's clock): it goes the way the PMP's would."""
    moment = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
    return {
        "type": ERASURE,
        "parameters": {
            "entity": {
                # A fresh id: the PMP's id of the person is not known here, and must not
                # be guessed from theirs.
                "id": f"prefsync-erase-{uuid.uuid4().hex}",
                "organization_id": tenant,
                "organization_user_id": user,
                "created_at": moment,
                "updated_at": moment,
            }
        },
    }
