"""The ingress's credentials (worker.ingress.credentials): client secrets as hashes in
Redis, signed expiring tokens, revocation, and the short cache of checked credentials."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tests.unit.conftest import install_runtime
from worker.infra.settings import Settings
from worker.ingress.credentials import TOKEN_PREFIX, CheckCache, CredentialStore


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


def test_issuing_a_token_writes_nothing_to_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    rt = install_runtime(monkeypatch, Settings())
    store = CredentialStore(rt.redis, 3600, b"deployment key")
    client, _ = store.add("acme")
    before = {name: rt.redis.dump(name) for name in rt.redis.scan_iter()}

    token = store.issue_token(client)

    assert token.startswith("pst_")
    assert {name: rt.redis.dump(name) for name in rt.redis.scan_iter()} == before
    assert store.check_token(token) == client


def test_a_token_expires_and_cannot_be_altered_or_signed_with_another_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = install_runtime(monkeypatch, Settings())
    store = CredentialStore(rt.redis, 60, b"deployment key")
    client, _ = store.add("acme")
    other, _ = store.add("globex")
    token = store.issue_token(client, now=1000.0)

    assert store.check_token(token, now=1059.0) == client
    assert store.check_token(token, now=1060.0) is None  # expired
    # Made with the stored secret hash alone (what a copy of Redis holds): refused.
    assert CredentialStore(rt.redis, 60).check_token(token, now=1001.0) is None
    forged = CredentialStore(rt.redis, 60).issue_token(client, now=1000.0)
    assert store.check_token(forged, now=1001.0) is None
    # Another client's or tenant's claims under this token's signature: refused.
    body, signature = token.removeprefix("pst_").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    for changed in ({**claims, "c": other.client_id}, {**claims, "t": "globex"}):
        altered = base64.urlsafe_b64encode(json.dumps(changed).encode()).rstrip(b"=").decode()
        assert store.check_token(f"pst_{altered}.{signature}", now=1001.0) is None
    for garbage in ("pst_", "pst_x.y", "pst_!!.", token + "x"):
        assert store.check_token(garbage, now=1001.0) is None


def test_a_token_the_previous_release_stored_is_still_accepted_until_it_expires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = install_runtime(monkeypatch, Settings())
    store = CredentialStore(rt.redis, 3600)
    client, _ = store.add("acme")
    old = "pst_" + "a" * 43
    rt.redis.set(TOKEN_PREFIX + hashlib.sha256(old.encode()).hexdigest(), client.client_id)

    assert store.check_token(old) == client
    store.revoke("acme", client.client_id)
    assert store.check_token(old) is None


def test_a_credential_revoked_before_its_token_is_issued_gets_a_token_that_never_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rt = install_runtime(monkeypatch, Settings())
    store = CredentialStore(rt.redis, 3600)
    client, _ = store.add("acme")
    store.revoke("acme", client.client_id)

    assert store.check_token(store.issue_token(client)) is None
