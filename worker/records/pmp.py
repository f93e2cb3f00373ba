"""Each tenant's PMP API credentials (docs/two-way-consent.md), sealed at rest as connector configs
are: one hash, ``prefsync:pmp:credentials``, field = tenant, value = the credentials' JSON
sealed with the first of PREFSYNC_SECRET_KEYS (worker.infra.sealing).

Credentials are validated again whenever they are read, as configs are, and opened once
per process per stored value.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import TYPE_CHECKING

from worker.connectors.pmp import PmpCredentials, parse_credentials
from worker.core.errors import InvalidConfig
from worker.infra.sealing import Sealer, SealingError
from worker.records.configs import reseal

if TYPE_CHECKING:
    from redis import Redis

KEY = "prefsync:pmp:credentials"
# The place a tenant's credentials are sealed for, beside its connectors' (worker.infra.sealing):
# no connector id may be this one, which holds a character connector ids do not.
PLACE = "pmp:credentials"


class PmpStore:
    def __init__(self, redis: Redis, sealer: Sealer, allow_hosts: tuple[str, ...] = ()) -> None:
        self.redis = redis
        self.sealer = sealer
        self.allow_hosts = allow_hosts
        # Keyed by the sealed value as read: credentials stored again are another key.
        self._opened = lru_cache(maxsize=1024)(self._open)

    def put(self, tenant: str, credentials: PmpCredentials) -> None:
        stored = credentials.to_stored()
        parse_credentials(stored, tenant=tenant, allow_hosts=self.allow_hosts)
        self.redis.hset(KEY, tenant, self.sealer.seal(json.dumps(stored), tenant, PLACE))

    def get(self, tenant: str) -> PmpCredentials | None:
        """The tenant's credentials, None when it has none; ``InvalidConfig`` when the
        stored value no longer opens or validates."""
        raw = self.redis.hget(KEY, tenant)
        return None if raw is None else self._opened(tenant, raw)

    def has(self, tenant: str) -> bool:
        return bool(self.redis.hexists(KEY, tenant))

    def delete(self, tenant: str) -> bool:
        """False when the tenant had none."""
        return bool(self.redis.hdel(KEY, tenant))

    def reencrypt(self) -> tuple[int, int]:
        """Seal again under the first key every tenant's credentials that are not;
        (re-encrypted, already current). ``InvalidConfig`` names those no key opens."""
        changed = current = 0
        unreadable: list[str] = []
        for field, raw in self.redis.hgetall(KEY).items():
            tenant = _text(field)
            if self.sealer.is_current(raw, tenant, PLACE):
                current += 1
                continue
            try:
                text = self.sealer.open_to_reseal(raw, tenant, PLACE)
            except SealingError:
                unreadable.append(tenant)
                continue
            changed += reseal(self.redis, self.sealer, KEY, field, raw, text, (tenant, PLACE))
        if unreadable:
            raise InvalidConfig(
                f"re-encrypted {changed} PMP credentials, but no key of PREFSYNC_SECRET_KEYS "
                f"opens those of tenant(s) {', '.join(map(repr, unreadable))}"
            )
        return changed, current

    def _open(self, tenant: str, raw: bytes | str) -> PmpCredentials:
        where = f"tenant {tenant!r}: the stored PMP credentials"
        try:
            data = json.loads(self.sealer.open(raw, tenant, PLACE))
        except SealingError as exc:
            raise InvalidConfig(f"{where} cannot be read: {exc}") from None
        except ValueError:
            raise InvalidConfig(f"{where} are not JSON") from None
        try:
            return parse_credentials(data, tenant=tenant, allow_hosts=self.allow_hosts)
        except InvalidConfig as exc:
            lines = str(exc).splitlines()
            raise InvalidConfig(
                "\n".join(f"{where} are no longer valid: {line}" for line in lines)
            ) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
