"""POST /signals/{connector_id} end to end: a real ``prefsync serve`` and Redis, configs
and PMP credentials stored through the CLI; the answers of docs/two-way-consent.md's table, each
refusal stored once, and a Redis outage answered 429 (never a 5xx)."""

from __future__ import annotations

import json
from typing import Any

import redis
import requests

from tests.e2e.helpers import braze_config, brevo_config, example
from tests.e2e.test_ingress import add_credential, metric
from tests.e2e.test_pipeline import put_config

PMP_KEY, PMP_SECRET = "didomi-key-e2e-0123456789", "didomi-secret-e2e-0123456789"
INBOX = "prefsync:signals:inbox"


def signal(url: str, connector_id: str, body: Any, auth: str | None) -> requests.Response:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = auth
    return requests.post(
        f"{url}/signals/{connector_id}", data=json.dumps(body), headers=headers, timeout=30
    )


def two_way_tenant(run_cli, env, tmp_path, fake) -> str:
    """acme with PMP credentials, a bidirectional Brevo and Braze, a Brevo that is not;
    the Basic credential of an ingress client."""
    pmp = {**example("pmp", "didomi.json"), "api_key": PMP_KEY, "api_secret": PMP_SECRET}
    pmp["api_url"] = f"{fake.url}/pmp/v1"
    path = tmp_path / "pmp.json"
    path.write_text(json.dumps(pmp))
    done = run_cli(env, "pmp", "put", "acme", str(path))
    assert done.returncode == 0, done.stderr
    brevo = example("connectors", "sendinblue-bidirectional.json")
    brevo["authentication"]["private_api_key"] = "xkeysib-e2e-signals-0123456789"
    put_config(run_cli, env, tmp_path, "acme", brevo)
    put_config(run_cli, env, tmp_path, "acme", {**braze_config(fake.url), "bidirectional": True})
    put_config(run_cli, env, tmp_path, "acme", brevo_config(), "--id", "quiet")
    client_id, secret = add_credential(run_cli, env)
    return requests.auth._basic_auth_str(client_id, secret)


def test_refusals_are_stored_once_and_every_answer_is_the_contracts(
    tmp_path, prefsync_env, fake_destinations, redis_server, start_ingress, run_cli
):
    # Given acme's two-way connectors and a running ingress,
    auth = two_way_tenant(run_cli, prefsync_env, tmp_path, fake_destinations)
    ingress = start_ingress(prefsync_env)
    client = redis.Redis.from_url(redis_server.url)
    brevo = example("signals", "brevo-unsubscribed.json")
    braze = example("signals", "braze-template.json")

    # a Brevo unsubscribe and a Braze template unsubscribe are stored, a copy is not,
    first = signal(ingress.url, "brevo-main", brevo, auth)
    assert first.status_code == 202, first.text
    assert first.json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert signal(ingress.url, "braze", braze, auth).json()["stored"] == 1
    assert signal(ingress.url, "brevo-main", brevo, auth).json()["duplicates"] == 1
    entries = [json.loads(raw) for raw in client.lrange(INBOX, 0, -1)]
    assert [(e["tenant"], e["signal"]["connector_id"], e["signal"]["field"]) for e in entries] == [
        ("acme", "brevo-main", "emailBlacklisted"),
        ("acme", "braze", "email_subscribe"),
    ]
    # and an opt-in is 202 but stores nothing.
    opt_in = signal(ingress.url, "brevo-main", {**brevo, "event": "list_addition"}, auth)
    assert opt_in.status_code == 202 and opt_in.json()["ignored"] == 1

    # bidirectional off: 403; unknown connector: 404; bad or no credential: 401; a body
    # of no known shape: 400, one line.
    assert signal(ingress.url, "quiet", brevo, auth).status_code == 403
    assert signal(ingress.url, "nope", brevo, auth).status_code == 404
    wrong = requests.auth._basic_auth_str("psc_0123456789abcdef", "pss_wrong")
    assert signal(ingress.url, "brevo-main", brevo, wrong).status_code == 401
    assert signal(ingress.url, "brevo-main", brevo, None).status_code == 401
    shape = signal(ingress.url, "braze", {"external_id": "u1"}, auth)
    assert shape.status_code == 400 and "\n" not in shape.json()["error"]
    assert client.llen(INBOX) == 2

    # When Redis stops, a signal is answered 429 with Retry-After, never a 5xx.
    redis_server.stop()
    down = signal(ingress.url, "brevo-main", {**brevo, "ts_event": 1796641400}, auth)
    assert down.status_code == 429, down.text
    assert int(down.headers["Retry-After"]) > 0
    scraped = requests.get(f"{ingress.url}/metrics", timeout=30).text
    assert metric(scraped, "prefsync_ingress_signal_requests_total", status="429") == 1
    assert metric(scraped, "prefsync_ingress_signals_total", outcome="stored") == 2


def test_bidirectional_is_refused_without_pmp_credentials(
    tmp_path, prefsync_env, fake_destinations, run_cli
):
    config = {**brevo_config(), "bidirectional": True}
    path = tmp_path / "brevo.json"
    path.write_text(json.dumps(config))
    done = run_cli(prefsync_env, "connectors", "put", "acme", str(path))
    assert done.returncode == 1
    assert "needs the tenant's PMP credentials" in done.stderr
    assert "prefsync pmp put acme FILE" in done.stderr
