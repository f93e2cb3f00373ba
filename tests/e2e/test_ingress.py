"""The HTTP ingress end to end: a real ``prefsync serve`` process, a real Redis and worker,
the local Braze/Brevo look-alike; every row of docs/ingress-api.md's contract table."""

from __future__ import annotations

import json
import re
from typing import Any

import redis
import requests

from tests.e2e.helpers import (
    braze_config,
    brevo_config,
    consent_event,
    example,
    wait_until,
)
from tests.e2e.test_pipeline import put_config

# The ingress's own secrets: client secrets and access tokens (worker.ingress.credentials).
INGRESS_SECRET = re.compile(r"ps[st]_[A-Za-z0-9_-]{20,}")


def add_credential(run_cli, env, tenant: str = "acme") -> tuple[str, str]:
    done = run_cli(env, "ingress", "add", tenant, "--json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)
    assert created["tenant"] == tenant
    return created["client_id"], created["client_secret"]


def token(url: str, client_id: str, secret: str) -> str:
    answer = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0
    return body["access_token"]


def post(url: str, body: Any, auth: str | None, content_type: str = "application/json"):
    headers = {"Content-Type": content_type}
    if auth is not None:
        headers["Authorization"] = auth
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(f"{url}/webhooks", data=data, headers=headers, timeout=30)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        sample, _, rest = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if sample == name and all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def nothing_enqueued(server) -> None:
    client = redis.Redis(port=server.port)
    try:
        assert client.llen("celery") == 0
        assert client.zcard("prefsync:outbox:due") == 0
    finally:
        client.close()


def assert_no_ingress_secret(where: str, text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"an ingress secret leaked into {where}"


def test_an_event_posted_with_a_token_reaches_braze_and_brevo_and_metrics_move(
    tmp_path, prefsync_env, fake_destinations, redis_server, start_worker, start_ingress, run_cli
):
    # Given acme's Braze and Brevo connectors, an ingress credential and a worker,
    fake = fake_destinations
    put_config(run_cli, prefsync_env, tmp_path, "acme", braze_config(fake.url))
    put_config(run_cli, prefsync_env, tmp_path, "acme", brevo_config())
    client_id, secret = add_credential(run_cli, prefsync_env)
    ingress = start_ingress(prefsync_env)
    worker = start_worker(prefsync_env)
    before = requests.get(f"{ingress.url}/metrics", timeout=10).text
    assert metric(before, "prefsync_outcomes_total", outcome="delivered") == 0

    # When the PMP fetches a token and posts the example consent event with it,
    access = token(ingress.url, client_id, secret)
    answer = post(ingress.url, example("events", "event-created.json"), f"Bearer {access}")

    # then the answer is 202 and names the event and its task,
    assert answer.status_code == 202, answer.text
    (accepted,) = answer.json()["events"]
    assert accepted["event_key"].startswith("event.created:") and accepted["task_id"]
    # and the event reaches both destinations,
    wait_until(
        lambda: {c.service for c in fake.calls() if c.status < 300} == {"braze", "brevo"},
        timeout=20,
        message=lambda: fake.calls(),
    )

    # and /metrics counts the deliveries, the answers and their latency, by connector type.
    def delivered() -> str | None:
        text = requests.get(f"{ingress.url}/metrics", timeout=10).text
        braze = metric(text, "prefsync_outcomes_total", connector_type="braze", outcome="delivered")
        brevo = metric(
            text, "prefsync_outcomes_total", connector_type="sendinblue", outcome="delivered"
        )
        return text if braze == 1 and brevo == 1 else None

    text = wait_until(delivered, timeout=10, message="deliveries not counted in /metrics")
    for kind in ("braze", "sendinblue"):
        assert (
            metric(
                text, "prefsync_destination_answers_total", connector_type=kind, status_class="2xx"
            )
            == 1
        )
        assert metric(text, "prefsync_delivery_latency_seconds_count", connector_type=kind) == 1
        assert (
            metric(text, "prefsync_delivery_latency_seconds_bucket", connector_type=kind, le="+Inf")
            == 1
        )
    assert metric(text, "prefsync_ingress_events_accepted_total") == 1
    assert metric(text, "prefsync_queue_depth") == 0
    assert metric(text, "prefsync_dead_letters") == 0
    # Basic auth with the client id and secret works as well.
    basic = requests.auth._basic_auth_str(client_id, secret)
    later = consent_event(
        "e-basic", "jane.doe@example.com", "2026-11-21T09:00:00Z", {"newsletter": False}
    )
    assert post(ingress.url, later, basic).status_code == 202

    # `prefsync stats` shows the same backlog, with headers,
    stats = run_cli(prefsync_env, "stats")
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.splitlines()[0] == "outcome\tcount"
    assert "queue depth\t" in stats.stdout and "oldest waiting (s)\t" in stats.stdout
    # and no secret of the ingress shows in any log, any output or in Redis.
    listed = run_cli(prefsync_env, "ingress", "list", "acme")
    assert client_id in listed.stdout
    secrets = [secret, access]
    for where, output in (
        ("ingress list", listed.stdout + listed.stderr),
        ("stats", stats.stdout),
        ("the ingress log", ingress.log()),
        ("the worker log", worker.log()),
        ("/metrics", text),
    ):
        assert_no_ingress_secret(where, output, secrets)
        assert not INGRESS_SECRET.search(output), where
    from tests.e2e.conftest import dump

    assert not INGRESS_SECRET.search(dump(redis_server).decode(errors="replace"))


def test_every_refusal_of_the_contract_enqueues_nothing(
    tmp_path, prefsync_env, redis_server, start_ingress, run_cli
):
    # Given small limits, an acme credential and its token,
    limits = {
        "PREFSYNC_MAX_EVENT_BYTES": "4096",
        "PREFSYNC_INGRESS_MAX_REQUEST_BYTES": "65536",
        "PREFSYNC_INGRESS_AUTH_CACHE": "0",
    }
    env = {**prefsync_env, **limits}
    client_id, secret = add_credential(run_cli, env)
    ingress = start_ingress(env)
    access = token(ingress.url, client_id, secret)
    bearer = f"Bearer {access}"
    event = example("events", "event-created.json")

    # no or bad credentials: 401 with WWW-Authenticate: Bearer,
    for auth in (None, "Bearer pst_not-a-token", requests.auth._basic_auth_str(client_id, "x")):
        answer = post(ingress.url, event, auth)
        assert answer.status_code == 401, answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # a token request with a wrong secret: 401 invalid_client,
    refused = requests.post(
        f"{ingress.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, "wrong"),
        timeout=10,
    )
    assert (refused.status_code, refused.json()) == (401, {"error": "invalid_client"})
    # an event of another tenant: 403,
    other = consent_event(
        "e-globex",
        "john@example.com",
        "2026-11-21T09:00:00Z",
        {"newsletter": True},
        tenant="globex",
    )
    assert post(ingress.url, other, bearer).status_code == 403
    assert post(ingress.url, [event, other], bearer).status_code == 403
    # invalid JSON and an invalid event: 400 with the message `prefsync enqueue` gives,
    for body in (b'{"type": 1', json.dumps({"type": "event.nope"}).encode()):
        answer = post(ingress.url, body, bearer)
        assert answer.status_code == 400, answer.text
        cli = run_cli(env, "enqueue", "-", input=body.decode())
        assert cli.returncode == 1
        assert answer.json()["error"] == cli.stderr.strip()
    # an array with a bad event: 400 naming it by position,
    answer = post(ingress.url, [event, {"type": "event.nope"}], bearer)
    assert answer.status_code == 400
    assert answer.json()["error"].startswith("item 2: type:")
    # an event over PREFSYNC_MAX_EVENT_BYTES, and a request over the total cap: 413,
    big = json.loads(json.dumps(event))
    big["parameters"]["entity"]["padding"] = "x" * 5000
    assert post(ingress.url, big, bearer).status_code == 413
    assert post(ingress.url, [event] * 200, bearer).status_code == 413
    # not JSON: 415,
    assert post(ingress.url, event, bearer, content_type="text/plain").status_code == 415
    # and nothing of it was enqueued.
    nothing_enqueued(redis_server)

    # When the credential is revoked, its token and its secret stop working.
    assert post(ingress.url, event, bearer).status_code == 202
    revoked = run_cli(env, "ingress", "revoke", "acme", client_id)
    assert revoked.returncode == 0, revoked.stderr
    assert post(ingress.url, event, bearer).status_code == 401
    basic = requests.auth._basic_auth_str(client_id, secret)
    assert post(ingress.url, event, basic).status_code == 401
    again = requests.post(
        f"{ingress.url}/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        timeout=10,
    )
    assert again.status_code == 401
    assert_no_ingress_secret("the ingress log", ingress.log(), [secret, access])


def test_redis_down_is_a_503_that_stores_nothing_then_202_once_it_is_back(
    tmp_path, prefsync_env, fake_destinations, redis_server, start_worker, start_ingress, run_cli
):
    # Given a Redis that keeps its data across a restart, acme's Braze connector, a
    # credential and a running ingress,
    redis_server.stop()
    redis_server.start(["--appendonly", "yes", "--appendfsync", "always"])
    fake = fake_destinations
    put_config(run_cli, prefsync_env, tmp_path, "acme", braze_config(fake.url))
    client_id, secret = add_credential(run_cli, prefsync_env)
    ingress = start_ingress(prefsync_env)
    basic = requests.auth._basic_auth_str(client_id, secret)
    event = example("events", "event-created.json")
    assert requests.get(f"{ingress.url}/readyz", timeout=10).status_code == 200

    # When Redis is stopped, a webhook is answered 503 with Retry-After, /readyz says so,
    redis_server.stop()
    answer = post(ingress.url, event, basic)
    assert answer.status_code == 503, answer.text
    assert int(answer.headers["Retry-After"]) > 0
    assert requests.get(f"{ingress.url}/readyz", timeout=10).status_code == 503
    assert requests.get(f"{ingress.url}/healthz", timeout=10).status_code == 200
    # a token request is a 503 too (the secret may be right: try again), and /metrics
    # still answers, saying Redis is down,
    refused = requests.post(
        f"{ingress.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(client_id, secret),
        timeout=30,
    )
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    scraped = requests.get(f"{ingress.url}/metrics", timeout=30)
    assert scraped.status_code == 200
    assert metric(scraped.text, "prefsync_redis_up") == 0
    assert metric(scraped.text, "prefsync_ingress_requests_total", status="503") == 1

    # then, Redis back, nothing of it was stored,
    redis_server.start()
    wait_until(lambda: requests.get(f"{ingress.url}/readyz", timeout=10).status_code == 200)
    nothing_enqueued(redis_server)
    # and the same webhook sent again is accepted and delivered.
    assert post(ingress.url, event, basic).status_code == 202
    start_worker(prefsync_env)
    wait_until(lambda: fake.calls("braze"), timeout=20, message=lambda: fake.calls())
    assert [c.status for c in fake.calls("braze")] == [201]
    assert secret not in ingress.log()


def test_a_forged_x_forwarded_for_does_not_pass_the_allow_list(
    prefsync_env, redis_server, start_ingress, run_cli
):
    # Given an ingress that takes calls from the PMP's address only, and no trusted proxy
    # (uvicorn alone would believe X-Forwarded-For from any local peer, as this test is),
    env = {**prefsync_env, "PREFSYNC_INGRESS_ALLOW_FROM": "35.159.1.63/32"}
    client_id, secret = add_credential(run_cli, env)
    ingress = start_ingress(env)
    basic = requests.auth._basic_auth_str(client_id, secret)

    # when a caller claims to be the PMP,
    answer = requests.post(
        f"{ingress.url}/webhooks",
        data=json.dumps(example("events", "event-created.json")),
        headers={
            "Content-Type": "application/json",
            "Authorization": basic,
            "X-Forwarded-For": "35.159.1.63",
        },
        timeout=30,
    )
    token = requests.post(
        f"{ingress.url}/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": basic, "X-Forwarded-For": "35.159.1.63"},
        timeout=30,
    )

    # then it is refused, and nothing is stored.
    assert (answer.status_code, token.status_code) == (403, 403)
    nothing_enqueued(redis_server)
