"""The benchmark's fast fake (bench/fake.py) answers like Braze and Brevo, counts what it
received and enforces Brevo's rate limit with real 429s."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import requests

from bench.fake import BenchFake, FakeThread

BRAZE_AUTH = {"Authorization": "Bearer bench-key"}
BREVO_AUTH = {"api-key": "xkeysib-bench"}
NOW = 1_800_000_000.25  # a quarter into a Brevo window


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def server(clock: Clock) -> Iterator[FakeThread]:
    with FakeThread(BenchFake(clock=clock)) as server:
        yield server


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def stats(http: requests.Session, server: FakeThread, samples: bool = False) -> dict:
    return http.get(f"{server.url}/_bench/stats", params={"samples": int(samples)}).json()


def track(http: requests.Session, server: FakeThread, body: object, **kw) -> requests.Response:
    return http.post(f"{server.url}/users/track", json=body, headers=BRAZE_AUTH, **kw)


def put_contact(http: requests.Session, server: FakeThread, identifier: str, **kw):
    return http.put(
        f"{server.url}/v3/contacts/{identifier}",
        params={"identifierType": "ext_id"},
        json={"emailBlacklisted": False, "attributes": {"NEWSLETTER": True}},
        **{"headers": BREVO_AUTH, **kw},
    )


def test_braze_track_answers_201_and_counts_users_and_latency(server, http, clock):
    body = {
        "attributes": [
            {"external_id": "u1", "email_subscribe": "opted_in", "bench_enqueued_at": "1.5"},
            {"external_id": "u2", "bench_enqueued_at": f"{NOW - 0.25:.6f}"},
            {"external_id": "u1", "email_subscribe": "unsubscribed"},
        ]
    }
    clock.now = NOW
    answer = track(http, server, body)

    assert answer.status_code == 201
    assert answer.json() == {"message": "success", "attributes_processed": 3}
    assert answer.headers["X-RateLimit-Limit"] == "3000"
    assert answer.headers["X-RateLimit-Remaining"] == "2999"
    seen = stats(http, server, samples=True)["braze"]
    assert seen["calls"] == seen["accepted_calls"] == 1
    assert seen["objects"] == 3
    assert seen["users"] == 2
    assert seen["by_status"] == {"201": 1}
    assert seen["latencies"] == [pytest.approx(NOW - 1.5), pytest.approx(0.25)]


def test_braze_refusals(server, http):
    no_key = http.post(f"{server.url}/users/track", json={"attributes": []})
    assert no_key.status_code == 401
    assert no_key.json() == {"message": "Invalid API Key"}
    assert track(http, server, {"events": []}).status_code == 400
    assert http.post(f"{server.url}/users/export", headers=BRAZE_AUTH).status_code == 404

    nobody = track(http, server, {"attributes": [{"email_subscribe": "opted_in"}]})
    assert nobody.status_code == 201
    assert nobody.json()["attributes_processed"] == 0
    assert nobody.json()["errors"][0]["index"] == 0

    seen = stats(http, server)["braze"]
    assert seen["calls"] == 4
    assert seen["by_status"] == {"201": 1, "400": 1, "401": 1, "404": 1}
    assert seen["objects"] == 0


def test_brevo_contact_calls_answer_like_brevo(server, http):
    update = put_contact(http, server, "jane.doe%40example.com")
    assert update.status_code == 204
    assert update.content == b""
    assert update.headers["x-sib-ratelimit-limit"] == "10"
    assert update.headers["x-sib-ratelimit-remaining"] == "9"
    assert update.headers["x-sib-ratelimit-reset"] == "1"

    created = http.post(
        f"{server.url}/v3/contacts",
        json={"ext_id": "u-7", "attributes": {"BENCH_ENQUEUED_AT": f"{NOW - 0.5:.6f}"}},
        headers=BREVO_AUTH,
    )
    assert created.status_code == 201
    assert created.json() == {"id": 1}

    # A batch item names its contact by email, id or sms (u-7 was created as contact 1).
    batch = http.post(
        f"{server.url}/v3/contacts/batch",
        json={"contacts": [{"email": "a@example.com"}, {"id": 1}]},
        headers=BREVO_AUTH,
    )
    assert batch.status_code == 204
    assert put_contact(http, server, "u-8", headers={}).status_code == 401

    seen = stats(http, server, samples=True)["brevo"]
    assert seen["accepted_calls"] == 3
    assert seen["calls"] == 4
    assert seen["objects"] == 4
    assert seen["users"] == 3  # jane.doe@example.com (decoded), u-7 twice, a@example.com
    assert seen["latencies"] == [pytest.approx(0.5)]


def test_brevo_limit_answers_429_past_10_calls_per_window(server, http, clock):
    answers = [put_contact(http, server, f"u{i}") for i in range(12)]

    assert [a.status_code for a in answers] == [204] * 10 + [429, 429]
    refused = answers[-1]
    assert refused.json() == {"code": "too_many_requests", "message": "Too many requests"}
    assert refused.headers["x-sib-ratelimit-remaining"] == "0"
    assert refused.headers["x-sib-ratelimit-reset"] == "1"

    # Another account has its own budget; the next window starts afresh.
    other = put_contact(http, server, "u-other", headers={"api-key": "xkeysib-other"})
    assert other.status_code == 204
    clock.now = NOW + 0.75
    assert put_contact(http, server, "u-next").status_code == 204

    seen = stats(http, server)
    assert seen["brevo_limit"] == 10
    assert seen["brevo"]["rate_limited"] == 2
    assert seen["brevo"]["accepted_calls"] == 12
    assert seen["brevo"]["objects"] == 12  # refused calls deliver nobody
    assert seen["brevo"]["peak_calls_per_window"] == 12


def test_reset_forgets_everything(server, http):
    track(http, server, {"attributes": [{"external_id": "u1"}]})
    put_contact(http, server, "u1")
    assert http.post(f"{server.url}/_bench/reset").json() == {"ok": True}

    seen = stats(http, server)
    assert seen["braze"]["calls"] == seen["brevo"]["calls"] == 0
    assert seen["braze"]["users"] == 0


def test_keep_alive_split_and_pipelined_requests_are_answered_in_order(server):
    host, port = server.url.removeprefix("http://").split(":")
    body = b'{"attributes": [{"external_id": "u1"}]}'
    request = (
        b"POST /users/track HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request[:20])  # one request in two packets...
        sock.sendall(request[20:] + request)  # ...then a second right behind it
        received = b""
        while received.count(b"HTTP/1.1 201 Created") < 2:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed early: {received!r}"
            received += chunk
    assert received.count(b'"attributes_processed": 1') == 2
    assert b"Connection: close" not in received


def test_the_bench_server_answers_as_the_test_server_does(server, http, clock):
    # Given the test server (tests/fakes/destinations.py) on the same clock,
    from tests.fakes.destinations import FakeDestinations

    requests_made = [
        ("POST", "/users/track", {"attributes": [{"external_id": "u1"}, {"color": "red"}]}, {}),
        ("POST", "/users/track", {"events": []}, {}),
        ("POST", "/users/track", {"attributes": []}, {"Authorization": ""}),
        ("POST", "/users/delete", {"external_ids": ["u1"]}, {}),
        ("POST", "/users/export", {}, {}),
        *[("PUT", f"/v3/contacts/u{i}", {"attributes": {}}, BREVO_AUTH) for i in range(11)],
        ("POST", "/v3/contacts", {"ext_id": "u-7"}, {"api-key": "xkeysib-other"}),
        ("POST", "/v3/contacts", {"ext_id": "u-7"}, {"api-key": "xkeysib-other"}),
        ("DELETE", "/v3/contacts/u-7", None, {"api-key": "xkeysib-other"}),
        ("PUT", "/v3/contacts/u-8", {}, {}),
        ("GET", "/v3/contacts", None, BREVO_AUTH),
    ]
    with FakeDestinations() as tested:
        tested.clock = clock
        # when both get the same requests,
        answers = [
            [
                http.request(method, f"{url}{path}", json=body, headers={**BRAZE_AUTH, **headers})
                for method, path, body, headers in requests_made
            ]
            for url in (server.url, tested.url)
        ]

    # then they answer the same statuses, bodies and rate-limit headers.
    def seen(answer: requests.Response) -> tuple:
        limits = {k.lower(): v for k, v in answer.headers.items() if "ratelimit" in k.lower()}
        return answer.status_code, answer.content, limits

    bench, tests = ([seen(a) for a in side] for side in answers)
    assert bench == tests
    assert [status for status, _, _ in bench].count(429) == 1  # Brevo's 11th call


def test_brevo_batch_is_all_or_nothing(server, http):
    def batch(*contacts: dict) -> requests.Response:
        body = {"contacts": [{**c, "attributes": {"NEWSLETTER": True}} for c in contacts]}
        return http.post(f"{server.url}/v3/contacts/batch", json=body, headers=BREVO_AUTH)

    unknown = batch(
        {"email": "a@example.com"},
        {"email": "b@unknown.invalid"},
        {"email": "c@example.com"},
        {"email": "d@unknown.invalid"},
    )
    assert unknown.status_code == 404
    assert unknown.json() == {
        "code": "document_not_found",
        "message": "No contact found for indexes 1,3",
    }
    not_an_identifier = batch({"email": "a@example.com"}, {"ext_id": "u-1"})
    assert not_an_identifier.status_code == 400
    assert not_an_identifier.json()["code"] == "invalid_parameter"
    server.fake.refuse_brevo_contact("e@example.com", "Invalid phone number")
    refused = batch({"email": "a@example.com"}, {"email": "e@example.com"})
    assert refused.status_code == 400
    assert refused.json() == {"code": "invalid_parameter", "message": "Invalid phone number"}
    assert stats(http, server)["brevo"]["objects"] == 0  # nothing updated by any of them

    assert batch({"email": "a@example.com"}, {"email": "c@example.com"}).status_code == 204
    assert stats(http, server)["brevo"]["objects"] == 2
