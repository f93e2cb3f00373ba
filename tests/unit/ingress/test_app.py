"""The HTTP ingress in process (worker.ingress.app through Starlette's TestClient, on
fakeredis): tokens, webhooks, a Redis that refuses, source addresses behind proxies. The
real process, Redis and worker are in tests/e2e/test_ingress.py."""

from __future__ import annotations

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
from worker.ingress.credentials import CredentialStore
from worker.producer import MAX_BATCH, BrokerUnavailable

EVENT = json.loads(
    (Path(__file__).resolve().parents[3] / "examples/events/event-created.json").read_text()
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


def test_a_token_request_is_refused_unparsed_when_too_large_or_of_too_many_fields(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    http, rt = serve(monkeypatch)
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    grant = "grant_type=client_credentials&"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with http:
        large = http.post("/oauth/token", content=grant + "f=x&" * 3000, headers=form)
        many = http.post(
            "/oauth/token",
            content=grant + "f=x&" * 20,
            headers={**form, "Authorization": basic(client.client_id, secret)},
        )
        wrong = http.post(
            "/oauth/token",
            content=grant + "f=x&" * 3000,
            headers={**form, "Authorization": basic(client.client_id, "nope")},
        )

    assert large.status_code == 413
    assert (many.status_code, many.json()) == (400, {"error": "invalid_request"})
    # A wrong Basic credential is refused before the body is looked at.
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})


def test_tokens_over_the_rate_are_a_429_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    http, rt = serve(monkeypatch, ingress_token_rate=2)
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    auth = {"Authorization": basic(client.client_id, secret)}
    grant = {"grant_type": "client_credentials"}
    with http:
        answers = [http.post("/oauth/token", data=grant, headers=auth) for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == {"error": "slow_down"}
    assert 0 < int(answers[2].headers["retry-after"]) <= 60
    # Tokens are signed, not stored: only the two answers under the rate carry one.
    assert ["access_token" in a.json() for a in answers] == [True, True, False]


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
