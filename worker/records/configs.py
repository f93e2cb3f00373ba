"""The per-tenant store of connector configs in Redis, sealed at rest, and the cached
destination type of each connector that routing asks for. Storing a config also writes
what the ingress's signals route reads of it (worker.records.signals), which holds no
credential.

A config is opened (unsealed, validated) once per process per stored version: every
delivery batch and dead letter reads its config, and the store keeps the configs it
opened by the exact sealed value it read. Reading is then one HGET; a config stored again
is another value, which the next read opens at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from functools import lru_cache
from typing import TYPE_CHECKING

from redis.exceptions import WatchError

from worker.connectors import CONNECTORS
from worker.connectors.base import Connector
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import InvalidConfig
from worker.infra.sealing import Sealer, SealingError
from worker.records import signals

if TYPE_CHECKING:
    from redis import Redis

KEY_PREFIX = "prefsync:connectors:"

# How long a worker process trusts the destination type it read for a connector: a config
# stored again with another type sends that connector's deliveries to the old type's queue
# for at most this long, where they are delivered all the same.
TYPE_TTL = 30.0

# Configs kept opened per process, the least recently read dropped first: more than the
# connectors one worker process delivers to in a while.
OPENED = 1024


class ConfigStore:
    """Every tenant's connector configs in Redis: one hash per tenant, key
    ``prefsync:connectors:{tenant}``, field = connector id, value = ``to_stored()`` JSON
    sealed with the first of PREFSYNC_SECRET_KEYS (worker.infra.sealing): the credentials are
    never in Redis, its AOF or a backup in clear.

    ``connectors`` (by canonical type id) are the connectors the configs read get
    (worker.connectors.connectors); ``opened`` bounds the configs kept opened."""

    def __init__(
        self,
        redis: Redis,
        sealer: Sealer,
        allow_hosts: tuple[str, ...] = (),
        connectors: dict[str, Connector] = CONNECTORS,
        opened: int = OPENED,
    ) -> None:
        self.redis = redis
        self.sealer = sealer
        self.allow_hosts = allow_hosts
        self.connectors = connectors
        # Keyed by the sealed value as read: a changed config is another key. A config
        # that does not open raises, and an exception is never cached: it raises each time.
        self._opened = lru_cache(maxsize=opened)(self._open)

    def put(self, tenant: str, config: ConnectorConfig) -> None:
        """Store ``config``, replacing the tenant's config of the same id. It is validated
        again as it will be read (InvalidConfig otherwise), so a model built without
        ``parse_config`` cannot store what every read would refuse."""
        stored = config.to_stored()
        parse_config(stored, connector_id=config.id, allow_hosts=self.allow_hosts)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                _key(tenant), config.id, self.sealer.seal(json.dumps(stored), tenant, config.id)
            )
            pipe.hset(signals.routes_key(tenant), config.id, signals.route_of(config))
            pipe.execute()

    def reencrypt(self) -> tuple[int, int]:
        """Seal again, under the first key and for its place, every stored config that is
        not (plain, sealed by the previous release, or under an older key); (re-encrypted,
        already current). A config no key opens for its place (moved from another tenant
        or connector, or under a key not given) is left as it is and named in the
        ``InvalidConfig`` raised at the end."""
        changed = current = 0
        unreadable: list[str] = []
        for name in self.redis.scan_iter(match=f"{KEY_PREFIX}*", count=500):
            tenant = _text(name).removeprefix(KEY_PREFIX)
            for field, raw in self.redis.hgetall(name).items():
                connector_id = _text(field)
                if self.sealer.is_current(raw, tenant, connector_id):
                    current += 1
                    continue
                try:
                    text = self.sealer.open_to_reseal(raw, tenant, connector_id)
                except SealingError:
                    unreadable.append(f"tenant {tenant!r}, connector {connector_id!r}")
                    continue
                changed += reseal(
                    self.redis, self.sealer, name, connector_id, raw, text, (tenant, connector_id)
                )
        if unreadable:
            raise InvalidConfig(
                f"re-encrypted {changed}, but no key of PREFSYNC_SECRET_KEYS opens, for its "
                "tenant and connector: " + "; ".join(unreadable)
            )
        return changed, current

    def get(self, tenant: str, connector_id: str) -> ConnectorConfig | None:
        raw = self.redis.hget(_key(tenant), connector_id)
        return None if raw is None else self._opened(tenant, connector_id, raw)

    def folded_id(self, tenant: str, connector_id: str, user: str) -> str | None:
        """``user`` as the connector's destination compares it when it ignores letter case
        (worker.connectors.base.Connector.folded_id); None when it compares it exactly, or
        the config is gone or no longer validates."""
        try:
            config = self.get(tenant, connector_id)
        except InvalidConfig:
            return None
        return None if config is None else config.connector.folded_id(user)

    def ids(self, tenant: str) -> list[str]:
        """The tenant's connector ids, sorted, without reading (or validating) the configs."""
        return sorted(_text(field) for field in self.redis.hkeys(_key(tenant)))

    def delete(self, tenant: str, connector_id: str) -> bool:
        """Remove a config; False when the tenant had none of that id."""
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(_key(tenant), connector_id)
            pipe.hdel(signals.routes_key(tenant), connector_id)
            deleted, _ = pipe.execute()
        return bool(deleted)

    def _open(self, tenant: str, connector_id: str, raw: bytes | str) -> ConnectorConfig:
        where = f"tenant {tenant!r}, connector {connector_id!r}"
        try:
            text = self.sealer.open(raw, tenant, connector_id)
        except SealingError as exc:
            raise InvalidConfig(f"{where}: the stored config cannot be read: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidConfig(f"{where}: the stored config is not JSON") from None
        try:
            return parse_config(
                data,
                connector_id=connector_id,
                allow_hosts=self.allow_hosts,
                connectors=self.connectors,
            )
        except InvalidConfig as exc:
            lines = str(exc).splitlines()
            raise InvalidConfig(
                "\n".join(f"{where}: stored config no longer valid: {line}" for line in lines)
            ) from None


def reseal(
    redis: Redis,
    sealer: Sealer,
    name: bytes | str,
    field: bytes | str,
    raw: bytes,
    text: str,
    place: tuple[str, str],
) -> bool:
    """Seal ``text`` again under the first key, for ``place`` (tenant, connector id), into
    hash ``name``'s ``field``, only if it still holds ``raw`` as read: a value stored
    meanwhile is already current."""
    with redis.pipeline(transaction=True) as pipe:
        pipe.watch(name)
        if pipe.hget(name, field) != raw:
            return False
        pipe.multi()
        pipe.hset(name, field, sealer.seal(text, *place))
        try:
            pipe.execute()
        except WatchError:
            return False
    return True


def _key(tenant: str) -> str:
    return f"{KEY_PREFIX}{tenant}"


def _text(value: bytes | str) -> str:
    # The shared client is created with decode_responses=False.
    return value.decode() if isinstance(value, bytes) else value


class Destinations:
    """The destination type of a tenant's connector, read from its config and kept a little
    while (``TYPE_TTL``): routing asks it for every delivery batch it publishes. None when
    the config is missing or cannot be read (the delivery dead-letters it)."""

    def __init__(self, configs: ConfigStore, now: Callable[[], float] = time.monotonic) -> None:
        self.configs = configs
        self.now = now
        self.known: dict[tuple[str, str], tuple[str | None, float]] = {}

    def type_of(self, tenant: str, connector_id: str) -> str | None:
        key = (tenant, connector_id)
        kind, until = self.known.get(key, (None, 0.0))
        if until <= self.now():
            kind = self._read(tenant, connector_id)
            if len(self.known) > 10_000:  # many tenants: start over rather than grow
                self.known.clear()
            self.known[key] = (kind, self.now() + TYPE_TTL)
        return kind

    def _read(self, tenant: str, connector_id: str) -> str | None:
        try:
            config = self.configs.get(tenant, connector_id)
        except InvalidConfig:
            return None
        return config.type_id if config is not None else None
