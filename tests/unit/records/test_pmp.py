"""PMP credentials in Redis: sealed, opened and validated when read, sealed again after a
key rotation, a value no key opens named."""

from __future__ import annotations

import fakeredis
import pytest

from worker.connectors.pmp import parse_credentials
from worker.core.errors import InvalidConfig
from worker.infra.sealing import Sealer, new_key
from worker.records.pmp import KEY, PmpStore

SECRET = "pmp-secret-0123456789abcdef"
OLD, NEW = new_key(), new_key()


def credentials(tenant: str = "acme"):
    return parse_credentials({"api_key": "pmp-key-0123456789", "api_secret": SECRET}, tenant=tenant)


def test_sealed_and_read_back() -> None:
    redis = fakeredis.FakeRedis()
    store = PmpStore(redis, Sealer([OLD]))
    store.put("acme", credentials())
    assert SECRET.encode() not in redis.hget(KEY, "acme")
    assert store.get("acme") == credentials()
    assert store.get("globex") is None and store.has("acme") and not store.has("globex")
    assert store.delete("acme") and not store.delete("acme")


def test_rotation_then_a_value_no_key_opens() -> None:
    redis = fakeredis.FakeRedis()
    PmpStore(redis, Sealer([OLD])).put("acme", credentials())
    rotated = PmpStore(redis, Sealer([NEW, OLD]))
    assert rotated.reencrypt() == (1, 0)
    assert PmpStore(redis, Sealer([NEW])).get("acme") == credentials()
    PmpStore(redis, Sealer([new_key()])).put("globex", credentials("globex"))
    with pytest.raises(InvalidConfig, match="tenant\\(s\\) 'globex'"):
        rotated.reencrypt()
    with pytest.raises(InvalidConfig, match="tenant 'globex': the stored PMP credentials cannot"):
        rotated.get("globex")
