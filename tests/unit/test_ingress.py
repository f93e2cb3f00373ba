"""The HTTP ingress in process (Starlette's TestClient, fakeredis): credentials, tokens,
source addresses behind proxies, and the batching of concurrent requests. The real
process, Redis and worker are in tests/e2e/test_ingress.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.unit.conftest import install_runtime
from worker.delivery.runtime import Runtime
from worker.infra.settings import Settings
from worker.ingress import app as app_module
from worker.ingress.batching import BatchingEnqueuer
from worker.ingress.credentials import CheckCache, CredentialStore
from worker.producer import MAX_BATCH, BrokerUnavailable

EVENT = json.loads(
    (Path(__file__).resolve().parents[2] / "examples/events/event-created.json").read_text()
)


class Enqueued:
    """Stands in for worker.producer.enqueue_validated: keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.error: Exception | None = None

    def __call__(self, payloads: list[Any]) -> list[str]:
        if self.error is not None:
            raise self.error
        self.calls.append(payloads)
        return [f"task-{len(self.calls)}-{i}" for i in range(0, len(payloads), MAX_BATCH)]


@pytest.fixture
def enqueued(monkeypatch: pytest.MonkeyPatch) -> Enqueued:
    stub = Enqueued()
    monkeypatch.setattr(app_module, "enqueue_validated", stub)
    return stub


def serve(
    monkeypatch: pytest.MonkeyPatch, client: tuple[str, int] = ("203.0.113.9", 5000), **settings
) -> tuple[TestClient, Runtime]:
    rt = install_runtime(monkeypatch, Settings(**settings))
    return TestClient(app_module.create_app(rt.settings), client=client), rt


def basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


def test_a_token_from_body_or_basic_credentials_lets_a_webhook_in(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    http, rt = serve(monkeypatch)
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    with http:
        by_body = http.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": client.client_id,
                "client_secret": secret,
            },
        )
        by_basic = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client.client_id, secret)},
        )
        assert by_body.status_code == by_basic.status_code == 200
        assert by_body.headers["cache-control"] == "no-store"
        access = by_basic.json()["access_token"]
        answer = http.post("/webhooks", json=EVENT, headers={"Authorization": f"Bearer {access}"})

    assert answer.status_code == 202
    assert answer.json()["events"][0]["task_id"] == "task-1-0"
    assert enqueued.calls == [[EVENT]]
    # Only hashes are kept in Redis.
    stored = repr({k: rt.redis.dump(k) for k in rt.redis.keys("prefsync:ingress:*")})
    assert secret not in stored and access not in stored


def test_a_token_request_is_refused_per_rfc_6749(monkeypatch: pytest.MonkeyPatch) -> None:
    http, rt = serve(monkeypatch)
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    with http:
        wrong = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": basic(client.client_id, "nope")},
        )
        unknown = http.post(
            "/oauth/token", data={"grant_type": "client_credentials", "client_id": "x"}
        )
        grant = http.post(
            "/oauth/token",
            data={"grant_type": "password"},
            headers={"Authorization": basic(client.client_id, secret)},
        )

    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
    assert wrong.headers["www-authenticate"].startswith("Basic")
    assert (unknown.status_code, unknown.json()) == (401, {"error": "invalid_client"})
    assert (grant.status_code, grant.json()) == (400, {"error": "unsupported_grant_type"})


def test_redis_refusing_the_event_is_a_503_with_retry_after(
    monkeypatch: pytest.MonkeyPatch, enqueued: Enqueued
) -> None:
    http, rt = serve(monkeypatch)
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    enqueued.error = BrokerUnavailable("cannot reach Redis (the broker) at redis://***@x")
    with http:
        answer = http.post(
            "/webhooks", json=EVENT, headers={"Authorization": basic(client.client_id, secret)}
        )

    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "redis://" not in answer.text


@pytest.mark.parametrize(
    ("peer", "forwarded", "allowed"),
    [
        ("35.159.1.63", None, True),  # the PMP itself
        ("198.51.100.7", None, False),  # someone else
        ("198.51.100.7", "35.159.1.63", False),  # someone else claiming to be the PMP
        ("10.0.0.5", "35.159.1.63", True),  # the PMP behind our trusted proxy
        ("10.0.0.5", "35.159.1.63, 198.51.100.7", False),  # the proxy saw someone else
        ("10.0.0.5", "198.51.100.7, 35.159.1.63", True),  # what came before is the caller's
        ("10.0.0.5", "35.159.1.63, 10.0.0.6", True),  # two trusted hops
    ],
)
def test_the_allow_list_believes_x_forwarded_for_only_from_a_trusted_proxy(
    monkeypatch: pytest.MonkeyPatch,
    enqueued: Enqueued,
    peer: str,
    forwarded: str | None,
    allowed: bool,
) -> None:
    http, rt = serve(
        monkeypatch,
        client=(peer, 40000),
        ingress_allow_from=("35.159.1.63/32",),
        ingress_trusted_proxies=("10.0.0.0/8",),
    )
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    headers = {"Authorization": basic(client.client_id, secret)}
    if forwarded is not None:
        headers["X-Forwarded-For"] = forwarded
    with http:
        answer = http.post("/webhooks", json=EVENT, headers=headers)
        token = http.post(
            "/oauth/token", data={"grant_type": "client_credentials"}, headers=headers
        )

    assert answer.status_code == (202 if allowed else 403)
    assert token.status_code == (200 if allowed else 403)


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


def test_concurrent_requests_are_enqueued_together_and_each_gets_its_own_task_id() -> None:
    # Given an enqueue that takes a while, as a Redis round trip does,
    calls: list[int] = []

    def slow_enqueue(payloads: list[Any]) -> list[str]:
        import time

        time.sleep(0.02)
        calls.append(len(payloads))
        start = sum(calls[:-1])
        return [f"m{start + i}" for i in range(0, len(payloads), MAX_BATCH)]

    enqueuer = BatchingEnqueuer(slow_enqueue, linger=0.0)  # what gathers them is the wait

    # when 250 requests of one event each arrive at once,
    async def send_all() -> list[list[str]]:
        return await asyncio.gather(*(enqueuer.enqueue([n]) for n in range(250)))

    try:
        answers = asyncio.run(send_all())
    finally:
        enqueuer.close()

    # then they took far fewer enqueue calls, and each request knows its message.
    assert sum(calls) == 250 and len(calls) < 10
    assert all(len(ids) == 1 for ids in answers)
    assert len({ids[0] for ids in answers}) >= len(calls)


def test_a_round_waits_briefly_for_more_requests_before_it_enqueues() -> None:
    calls: list[int] = []

    def enqueue(payloads: list[Any]) -> list[str]:
        calls.append(len(payloads))
        return ["m"] * len(range(0, len(payloads), MAX_BATCH))

    enqueuer = BatchingEnqueuer(enqueue, linger=0.2)

    async def two_requests_50_ms_apart() -> None:
        first = asyncio.ensure_future(enqueuer.enqueue([1]))
        await asyncio.sleep(0.05)
        await asyncio.gather(first, enqueuer.enqueue([2]))

    try:
        asyncio.run(two_requests_50_ms_apart())
    finally:
        enqueuer.close()

    assert calls == [2]
