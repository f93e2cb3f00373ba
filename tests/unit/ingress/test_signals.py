"""POST /signals/{connector_id} in process (TestClient, fakeredis): the answers of the
contract, refusals stored once before the 202, never a 5xx."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from starlette.testclient import TestClient

from tests.unit.ingress.test_app import basic, serve
from worker.connectors.config import parse_config
from worker.connectors.pmp import parse_credentials
from worker.delivery.runtime import Runtime
from worker.ingress.credentials import CredentialStore
from worker.records.signals import INBOX, SignalInbox

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BREVO = json.loads((EXAMPLES / "signals" / "brevo-unsubscribed.json").read_text())
BRAZE = json.loads((EXAMPLES / "signals" / "braze-template.json").read_text())


def stored_config(rt: Runtime, name: str, **extra: object) -> None:
    raw = json.loads((EXAMPLES / "connectors" / name).read_text())
    config = parse_config({**raw, **extra})
    rt.configs.put("acme", config)


@pytest.fixture
def ingress(monkeypatch: pytest.MonkeyPatch) -> tuple[TestClient, Runtime, str]:
    http, rt = serve(monkeypatch)
    rt.pmp.put(
        "acme", parse_credentials({"api_key": "k" * 20, "api_secret": "s" * 20}, tenant="acme")
    )
    stored_config(rt, "sendinblue-bidirectional.json")
    stored_config(rt, "braze.json", bidirectional=True)
    stored_config(rt, "sendinblue.json", id="quiet")
    client, secret = CredentialStore(rt.redis, 3600).add("acme")
    return http, rt, basic(client.client_id, secret)


def inbox(rt: Runtime) -> list[dict]:
    return [json.loads(raw) for raw in rt.redis.lrange(INBOX, 0, -1)]


def test_a_brevo_unsubscribe_is_stored_once(ingress) -> None:
    http, rt, auth = ingress
    with http:
        first = http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": auth})
        again = http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": auth})
    assert first.status_code == again.status_code == 202
    assert first.json() == {"stored": 1, "duplicates": 0, "ignored": 0}
    assert again.json() == {"stored": 0, "duplicates": 1, "ignored": 0}
    [entry] = inbox(rt)
    assert entry["tenant"] == "acme"
    assert entry["signal"]["user"] == "jane.doe@example.com"
    assert entry["signal"]["field"] == "emailBlacklisted"
    assert rt.redis.ttl(f"prefsync:signals:seen:{entry['id']}") > 6 * 24 * 3600


def test_a_braze_template_with_a_bearer_token(ingress) -> None:
    http, rt, auth = ingress
    with http:
        token = http.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": auth},
        ).json()["access_token"]
        answer = http.post(
            "/signals/braze", json=BRAZE, headers={"Authorization": f"Bearer {token}"}
        )
    assert answer.status_code == 202
    assert inbox(rt)[0]["signal"]["field"] == "email_subscribe"


def test_an_opt_in_is_202_and_ignored(ingress) -> None:
    http, rt, auth = ingress
    body = {**BREVO, "event": "list_addition"}
    with http:
        answer = http.post("/signals/brevo-main", json=body, headers={"Authorization": auth})
    assert answer.status_code == 202 and answer.json()["ignored"] == 1
    assert inbox(rt) == []


def test_the_refusals(ingress) -> None:
    http, rt, auth = ingress
    with http:
        assert http.post("/signals/brevo-main", json=BREVO).status_code == 401
        bad = basic("psc_0000000000000000", "pss_wrong")
        assert (
            http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": bad}).status_code
            == 401
        )
        off = http.post("/signals/quiet", json=BREVO, headers={"Authorization": auth})
        assert off.status_code == 403 and "bidirectional is off" in off.json()["error"]
        unknown = http.post("/signals/nope", json=BREVO, headers={"Authorization": auth})
        assert unknown.status_code == 404
        not_json = http.post(
            "/signals/brevo-main", content=b"{nope", headers={"Authorization": auth}
        )
        assert not_json.status_code == 400 and not_json.json() == {"error": "body: not valid JSON"}
        shape = http.post(
            "/signals/braze", json={"external_id": "u1"}, headers={"Authorization": auth}
        )
        assert shape.status_code == 400 and "body: needs email_subscribe" in shape.json()["error"]
    assert inbox(rt) == []


def test_another_tenants_connector_is_unknown(ingress) -> None:
    http, rt, _ = ingress
    client, secret = CredentialStore(rt.redis, 3600).add("globex")
    with http:
        answer = http.post(
            "/signals/brevo-main",
            json=BREVO,
            headers={"Authorization": basic(client.client_id, secret)},
        )
    assert answer.status_code == 404


def test_redis_down_is_a_429_never_a_5xx(ingress, monkeypatch: pytest.MonkeyPatch) -> None:
    http, _, auth = ingress

    def down(*args: object, **kwargs: object) -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    with http:
        monkeypatch.setattr(SignalInbox, "store", down)
        stored = http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": auth})
        monkeypatch.setattr(SignalInbox, "route", down)
        routed = http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": auth})
        monkeypatch.setattr(SignalInbox, "route", lambda *a: 1 / 0)
        bug = http.post("/signals/brevo-main", json=BREVO, headers={"Authorization": auth})
    for answer in (stored, routed, bug):
        assert answer.status_code == 429 and answer.headers["retry-after"] == "5"


def test_metrics_count_the_signals(ingress) -> None:
    http, _, auth = ingress
    with http:
        http.post(
            "/signals/brevo-main",
            json=[BREVO, {**BREVO, "event": "opened"}],
            headers={"Authorization": auth},
        )
        text = http.get("/metrics").text
    assert 'prefsync_ingress_signals_total{outcome="stored"} 1.0' in text
    assert 'prefsync_ingress_signals_total{outcome="ignored"} 1.0' in text
    assert 'prefsync_ingress_signal_requests_total{status="202"} 1.0' in text
