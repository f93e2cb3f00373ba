"""The ingress's credentials (worker.ingress.credentials): client secrets and tokens as
hashes in Redis, revocation, and the short cache of checked credentials."""

from __future__ import annotations

import pytest

from tests.unit.conftest import install_runtime
from worker.infra.settings import Settings
from worker.ingress.credentials import CheckCache, CredentialStore


def test_a_checked_credential_is_trusted_for_the_cache_period_only() -> None:
    now = [100.0]
    cache = CheckCache(ttl=1.0, clock=lambda: now[0])
    cache.put("bearer pst_x", None)

    assert cache.get("bearer pst_x") == (True, None)
    now[0] += 1.0
    assert cache.get("bearer pst_x") == (False, None)


def test_a_revoked_credential_and_its_tokens_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = install_runtime(monkeypatch, Settings())
    store = CredentialStore(rt.redis, 3600)
    client, secret = store.add("acme")
    token = store.issue_token(client)
    other, _ = store.add("globex")

    assert store.check_token(token) == client
    assert store.check_secret(client.client_id, secret) == client
    assert [c.client_id for c in store.list("acme")] == [client.client_id]
    assert not store.revoke("globex", client.client_id)  # another tenant's: not found
    assert store.revoke("acme", client.client_id)

    assert store.check_token(token) is None
    assert store.check_secret(client.client_id, secret) is None
    assert store.list("acme") == [] and store.list("globex") == [other]
