"""The PMP client: credentials validated like a connector's, one token per tenant renewed
on a 401, /sessions paced, consent events and user pages, and every answer classified as
the destinations' are."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests
import responses

from worker.connectors.base import Transport
from worker.connectors.pmp import (
    ConsentEvent,
    PmpClient,
    PmpCredentials,
    Purpose,
    SessionWindow,
    parse_credentials,
)
from worker.core.errors import Deferred, InvalidConfig, PermanentError, RetryableError

API = "https://api.pmp.example/v1"
KEY, SECRET = "pmp-key-0123456789abcdef", "pmp-secret-0123456789abcdef"
EVENTS = f"{API}/consents/events?organization_id=acme"
USERS = f"{API}/consents/users"


def credentials(**extra: object) -> PmpCredentials:
    raw = {"api_key": KEY, "api_secret": SECRET, "api_url": API, **extra}
    return parse_credentials(raw, tenant="acme")


def event(event_id: str = "ev-1") -> ConsentEvent:
    return ConsentEvent(
        id=event_id,
        created_at=datetime(2026, 12, 7, 10, 0, tzinfo=UTC),
        user_id="jane@example.com",
        regulation="gdpr",
        purposes=(Purpose(id="newsletter", enabled=False),),
        metadata={"connector": "brevo-main", "signal": "unsubscribed"},
    )


def client(clock: list[float] | None = None) -> PmpClient:
    now = clock or [0.0]
    return PmpClient(Transport(timeout=2.0), SessionWindow(limit=3, window=15, now=lambda: now[0]))


def sessions(*tokens: str) -> responses.BaseResponse:
    return responses.add(
        responses.POST, f"{API}/sessions", json={"access_token": tokens[0]}, status=201
    )


# -- credentials ---------------------------------------------------------------------------


def test_defaults_and_the_tenant_as_organization() -> None:
    parsed = parse_credentials({"api_key": KEY, "api_secret": SECRET}, tenant="acme")
    assert parsed.organization_id == "acme"
    assert parsed.api_url == "https://api.didomi.io/v1"
    assert parsed.regulation == "gdpr"
    assert parsed.describe()["api_secret"] == "…cdef"
    assert KEY not in json.dumps(parsed.describe())


def test_credentials_of_another_organization_are_refused() -> None:
    with pytest.raises(InvalidConfig, match="organization_id: must be the tenant's id"):
        credentials(organization_id="other")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://api.pmp.example/v1", "must use https"),
        ("https://10.0.0.8/v1", "not an IP address"),
        ("https://127.0.0.1/v1", "not an IP address"),
        ("https://localhost/v1", "must name the PMP API's host"),
        ("https://user:pw@api.pmp.example/v1", "user info"),
        ("https://api.pmp.example:8443/v1", "must not name a port"),
        ("https://api.pmp.example/v1?x=1", "query"),
        ("ftp://api.pmp.example", "https:// URL"),
    ],
)
def test_api_url_follows_the_host_rules(url: str, problem: str) -> None:
    with pytest.raises(InvalidConfig, match=problem):
        credentials(api_url=url)


def test_an_allowed_host_port_may_be_plain_http() -> None:
    raw = {"api_key": KEY, "api_secret": SECRET, "api_url": "http://127.0.0.1:8025/v1/"}
    parsed = parse_credentials(raw, tenant="acme", allow_hosts=("127.0.0.1:8025",))
    assert parsed.api_url == "http://127.0.0.1:8025/v1"


def test_refusals_name_the_field_never_the_secret() -> None:
    with pytest.raises(InvalidConfig) as refused:
        parse_credentials({"api_key": KEY, "api_secret": "a b", "extra": 1}, tenant="acme")
    lines = str(refused.value).splitlines()
    assert lines == [
        "api_secret: must be a single token, without spaces or line breaks",
        "extra: unknown field",
    ]
    assert KEY not in str(refused.value)
    with pytest.raises(InvalidConfig, match="api_secret: field required"):
        parse_credentials({"api_key": KEY}, tenant="acme")
    with pytest.raises(InvalidConfig, match="must be a JSON object"):
        parse_credentials([KEY], tenant="acme")


# -- tokens --------------------------------------------------------------------------------


@responses.activate
def test_one_token_per_tenant_sent_as_bearer() -> None:
    session = sessions("jwt-1")
    responses.add(responses.POST, EVENTS, json={"id": "ev-1"}, status=201)
    pmp = client()
    assert pmp.write_events(credentials(), [event("ev-1")]) == 201
    assert pmp.write_events(credentials(), [event("ev-2")]) == 201
    assert session.call_count == 1
    login = json.loads(responses.calls[0].request.body)
    assert login == {"type": "api-key", "key": KEY, "secret": SECRET}
    assert responses.calls[1].request.headers["Authorization"] == "Bearer jwt-1"


@responses.activate
def test_a_401_gets_a_new_token_and_sends_again() -> None:
    responses.add(responses.POST, f"{API}/sessions", json={"access_token": "old"}, status=201)
    responses.add(responses.POST, f"{API}/sessions", json={"access_token": "new"}, status=201)
    responses.add(responses.POST, EVENTS, json={"message": "expired"}, status=401)
    responses.add(responses.POST, EVENTS, json={"id": "ev-1"}, status=201)
    assert client().write_events(credentials(), [event()]) == 201
    sent = [call.request.headers.get("Authorization") for call in responses.calls]
    assert sent == [None, "Bearer old", None, "Bearer new"]


@responses.activate
def test_a_second_401_is_for_an_operator() -> None:
    sessions("jwt")
    responses.add(responses.POST, EVENTS, json={"message": "nope"}, status=401)
    with pytest.raises(PermanentError) as refused:
        client().write_events(credentials(), [event()])
    assert refused.value.operator_action and refused.value.status == 401
    assert "prefsync pmp put acme" in str(refused.value)


@responses.activate
def test_wrong_key_and_secret_are_permanent_and_never_quoted() -> None:
    body = {"code": 40100, "name": "NotAuthenticated", "message": f"bad key {KEY}"}
    responses.add(responses.POST, f"{API}/sessions", json=body, status=401)
    with pytest.raises(PermanentError) as refused:
        client().write_events(credentials(), [event()])
    assert refused.value.operator_action
    assert KEY not in str(refused.value) and "NotAuthenticated" in str(refused.value)


@responses.activate
def test_sessions_are_paced_per_organization() -> None:
    responses.add(responses.POST, f"{API}/sessions", json={"access_token": "t"}, status=201)
    responses.add(responses.POST, EVENTS, status=401)
    clock = [100.0]
    pmp = client(clock)
    with pytest.raises(PermanentError):  # two sessions: the first token, its renewal
        pmp.write_events(credentials(), [event()])
    clock[0] = 101.0
    with pytest.raises(PermanentError):  # the third session
        pmp.write_events(credentials(), [event()])
    clock[0] = 101.5
    with pytest.raises(Deferred) as deferred:  # a fourth in 15 s must wait
        pmp.write_events(credentials(), [event()])
    assert deferred.value.wait == pytest.approx(13.5)
    clock[0] = 115.5
    with pytest.raises(PermanentError):
        pmp.write_events(credentials(), [event()])


# -- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503])
@responses.activate
def test_transient_answers_retry(status: int) -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, json={"message": "later"}, status=status)
    with pytest.raises(RetryableError) as failed:
        client().write_events(credentials(), [event()])
    assert failed.value.status == status


@responses.activate
def test_a_429_says_when_to_come_back() -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, status=429, headers={"Retry-After": "7"})
    with pytest.raises(RetryableError) as failed:
        client().write_events(credentials(), [event()])
    assert failed.value.retry_after == 7.0


@responses.activate
def test_no_answer_retries() -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, body=requests.ConnectTimeout())
    with pytest.raises(RetryableError, match="timed out"):
        client().write_events(credentials(), [event()])


@pytest.mark.parametrize("status", [400, 404, 422])
@responses.activate
def test_other_4xx_give_up(status: int) -> None:
    sessions("t")
    body = {"code": status, "name": "BadRequest", "message": "purpose unknown"}
    responses.add(responses.POST, EVENTS, json=body, status=status)
    with pytest.raises(PermanentError, match="BadRequest: purpose unknown"):
        client().write_events(credentials(), [event()])


@responses.activate
def test_an_event_already_written_is_success() -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, json={"message": "already exists"}, status=409)
    assert client().write_events(credentials(), [event()]) == 409


@responses.activate
def test_the_event_body() -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, json={}, status=201)
    client().write_events(credentials(), [event()])
    assert json.loads(responses.calls[1].request.body) == {
        "id": "ev-1",
        "created_at": "2026-12-07T10:00:00.000Z",
        "user": {"organization_user_id": "jane@example.com"},
        "regulation": "gdpr",
        "consents": {"purposes": [{"id": "newsletter", "enabled": False}], "vendors": {}},
        "delegate": {
            "id": "prefsync",
            "name": "prefsync",
            "metadata": {"connector": "brevo-main", "signal": "unsubscribed"},
        },
    }


@responses.activate
def test_several_events_go_as_one_array() -> None:
    sessions("t")
    responses.add(responses.POST, EVENTS, json={}, status=201)
    client().write_events(credentials(), [event("a"), event("b")])
    assert [e["id"] for e in json.loads(responses.calls[1].request.body)] == ["a", "b"]


# -- users ---------------------------------------------------------------------------------


@responses.activate
def test_users_follow_the_cursor() -> None:
    sessions("t")
    first = {"data": [{"organization_user_id": "u1"}], "limit": 1, "cursor": "c2"}
    last = {"data": [{"organization_user_id": "u2"}], "limit": 1, "cursor": None}
    responses.add(responses.GET, USERS, json=first)
    responses.add(responses.GET, USERS, json=last)
    found = [user["organization_user_id"] for user in client().users(credentials())]
    assert found == ["u1", "u2"]
    second = responses.calls[2].request.url
    assert "%24cursor=c2" in second and "regulation=gdpr" in second


@responses.activate
def test_one_user() -> None:
    sessions("t")
    responses.add(
        responses.GET,
        USERS,
        json={"data": [{"organization_user_id": "jane"}], "cursor": None},
        match=[
            responses.matchers.query_param_matcher(
                {"organization_id": "acme", "regulation": "gdpr", "organization_user_id": "jane"}
            )
        ],
    )
    assert client().user(credentials(), "jane") == {"organization_user_id": "jane"}
