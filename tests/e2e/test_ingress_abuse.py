"""The ingress under abuse, end to end: a real ``prefsync serve`` and Redis, attacked from
loopback (bounded in sockets, bytes and time). Each test performs the attack or sends the
input, and checks that the ingress refuses it cheaply and keeps answering everyone else
(docs/security.md, "The ingress under abuse")."""

from __future__ import annotations

import base64
import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Callable

import requests

from tests.e2e.helpers import consent_event
from tests.e2e.test_ingress import add_credential, nothing_enqueued, post

# Moments an offset carries past year 9999 or before year 1 once read in UTC.
OUT_OF_RANGE = ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59")


def test_a_timestamp_out_of_range_is_a_400_with_the_line_enqueue_prints(
    prefsync_env, redis_server, start_ingress, run_cli
):
    # Given an acme credential and a running ingress,
    client_id, secret = add_credential(run_cli, prefsync_env)
    ingress = start_ingress(prefsync_env)
    basic = requests.auth._basic_auth_str(client_id, secret)

    for moment in OUT_OF_RANGE:
        for field in ("updated_at", "created_at"):
            event = consent_event("e-1", "john@example.com", "2026-11-21T09:00:00Z", {"n": True})
            event["parameters"]["entity"][field] = moment
            if field == "created_at":
                del event["parameters"]["entity"]["updated_at"]
            # When the event is posted and given to `prefsync enqueue`,
            answer = post(ingress.url, event, basic)
            cli = run_cli(prefsync_env, "enqueue", "-", input=json.dumps(event))

            # then both refuse it with the same one line naming the field: no 500 (which
            # the PMP would retry forever), no traceback.
            assert answer.status_code == 400, (moment, field, answer.text)
            error = answer.json()["error"]
            assert field in error and "\n" not in error
            assert cli.returncode == 1, cli.stderr
            assert "Traceback" not in cli.stderr
            assert cli.stderr.strip() == error
    nothing_enqueued(redis_server)


def raw_request(port: int, head: bytes, timeout: float = 5.0) -> bytes:
    """Send ``head`` (a request line and headers, no body) and read what comes back before
    the server closes or ``timeout`` passes; b"" when nothing does."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
                if b"\r\n\r\n" in received:
                    break
        return received


def test_a_wrong_basic_credential_on_the_token_endpoint_is_refused_before_the_body(
    prefsync_env, start_ingress, run_cli
):
    # Given a running ingress and a client id,
    client_id, _ = add_credential(run_cli, prefsync_env)
    ingress = start_ingress(prefsync_env)
    wrong = base64.b64encode(f"{client_id}:wrong".encode()).decode()

    # when a token request announces a megabyte of body with a wrong Basic credential and
    # sends none of it,
    started = time.monotonic()
    answer = raw_request(
        ingress.port,
        b"POST /oauth/token HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n"
        b"Authorization: Basic " + wrong.encode() + b"\r\nContent-Length: 1000000\r\n\r\n",
    )

    # then the answer is a 401 at once: the body is neither awaited nor read.
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert time.monotonic() - started < 2


def huge_form() -> bytes:
    """A form of a million fields, just under the 4 MiB request cap: a second of parse_qs."""
    return b"grant_type=client_credentials&" + b"f=x&" * 1_000_000


def latencies_while(attack: Callable[[], None], url: str, seconds: float) -> list[float]:
    """Run ``attack`` in three threads for ``seconds`` while timing GET ``url`` in a loop."""
    stop = threading.Event()

    def repeat() -> None:
        while not stop.is_set():
            attack()

    attackers = [threading.Thread(target=repeat, daemon=True) for _ in range(3)]
    for thread in attackers:
        thread.start()
    timings = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            started = time.monotonic()
            assert requests.get(url, timeout=10).status_code == 200
            timings.append(time.monotonic() - started)
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in attackers:
            thread.join(30)
    return timings


def test_huge_token_forms_are_refused_unread_and_the_ingress_keeps_answering(
    prefsync_env, start_ingress
):
    # Given a running ingress,
    ingress = start_ingress(prefsync_env)
    form = huge_form()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    answers: list[int] = []

    def attack() -> None:
        with contextlib.suppress(requests.ConnectionError):
            answer = requests.post(f"{ingress.url}/oauth/token", data=form, headers=headers)
            answers.append(answer.status_code)

    # when three clients post a million-field form to /oauth/token, over and over, for 6 s,
    timings = latencies_while(attack, f"{ingress.url}/readyz", 6)

    # then each is refused as too large, unparsed (413),
    assert answers and set(answers) == {413}, answers
    # and /readyz answers within a second throughout.
    assert max(timings) < 1, sorted(timings)[-5:]


def test_token_issuance_is_limited_per_client_id(prefsync_env, start_ingress, run_cli):
    # Given a limit of 5 tokens a minute per client, and two clients of acme,
    env = {**prefsync_env, "PREFSYNC_INGRESS_TOKEN_RATE": "5"}
    client_id, secret = add_credential(run_cli, env)
    other_id, other_secret = add_credential(run_cli, env)
    ingress = start_ingress(env)

    def ask(client: str, key: str) -> requests.Response:
        grant = {"grant_type": "client_credentials"}
        return requests.post(f"{ingress.url}/oauth/token", data=grant, auth=(client, key))

    # when the first asks for 6 tokens,
    answers = [ask(client_id, secret) for _ in range(6)]

    # then the sixth is refused with 429 and how long to wait, and issues no token,
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    assert 0 < int(answers[5].headers["Retry-After"]) <= 60
    assert "access_token" not in answers[5].json()
    # the tokens it was given still work, a wrong secret is still a 401 (not a 429),
    event = consent_event("e-1", "john@example.com", "2026-11-21T09:00:00Z", {"n": True})
    bearer = f"Bearer {answers[0].json()['access_token']}"
    assert post(ingress.url, event, bearer).status_code == 202
    assert ask(client_id, "wrong").status_code == 401
    # and the other client is not held back by the first.
    assert ask(other_id, other_secret).status_code == 200


# The attackers' address: loopback, but not the 127.0.0.1 the PMP's requests come from here.
ATTACKER = "127.0.0.2"


def attacker_socket(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind((ATTACKER, 0))
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    try:
        sock.setblocking(False)
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def answered_within(seconds: float, request: Callable[[], requests.Response], status: int):
    started = time.monotonic()
    answer = request()
    took = time.monotonic() - started
    assert answer.status_code == status, answer.text
    assert took < seconds, f"answered in {took:.2f} s"


def test_slowloris_sockets_are_cut_off_while_healthz_and_webhooks_are_answered(
    prefsync_env, start_ingress, run_cli
):
    # Given an ingress that gives a request 3 s for its headers, and a credential,
    env = {**prefsync_env, "PREFSYNC_INGRESS_READ_TIMEOUT": "3"}
    client_id, secret = add_credential(run_cli, env)
    ingress = start_ingress(env)
    basic = requests.auth._basic_auth_str(client_id, secret)
    event = consent_event("e-1", "john@example.com", "2026-11-21T09:00:00Z", {"n": True})

    # when 200 sockets start a request and send a header line every half second,
    sockets = [attacker_socket(ingress.port) for _ in range(200)]
    started = time.monotonic()
    for sock in sockets:
        sock.sendall(b"POST /webhooks HTTP/1.1\r\nHost: x\r\n")
    open_sockets = list(sockets)
    try:
        while open_sockets and time.monotonic() - started < 20:
            for sock in list(open_sockets):
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    open_sockets.remove(sock)
            # then /healthz and a real webhook are answered within a second meanwhile,
            answered_within(1, lambda: requests.get(f"{ingress.url}/healthz", timeout=5), 200)
            answered_within(1, lambda: post(ingress.url, event, basic), 202)
            time.sleep(0.5)
            open_sockets = [sock for sock in open_sockets if not closed_by_server(sock)]
        # and the server closes every one of them soon after its 3 s.
        assert not open_sockets, f"{len(open_sockets)} slow sockets still open"
        assert time.monotonic() - started < 3 + 3
    finally:
        for sock in sockets:
            sock.close()


def test_a_huge_header_is_refused_before_it_is_read_whole(prefsync_env, start_ingress):
    # Given a running ingress,
    ingress = start_ingress(prefsync_env)

    # when a request sends a header of up to 4 MB, 64 KiB at a time, watching for an answer,
    sent = 0
    answer = b""
    with attacker_socket(ingress.port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with contextlib.suppress(OSError):
            while sent < 4_000_000 and not answer:
                sock.sendall(b"a" * 65536)
                sent += 65536
                time.sleep(0.02)
                with contextlib.suppress(BlockingIOError):
                    answer = sock.recv(65536, socket.MSG_DONTWAIT)

    # then it is answered 431 and cut off long before the end.
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert sent < 1_000_000


def test_idle_sockets_from_one_address_cannot_take_every_file_descriptor(
    prefsync_env, start_ingress
):
    # Given an ingress allowing 50 connections per address, under a 128-descriptor limit,
    env = {**prefsync_env, "PREFSYNC_INGRESS_MAX_CONNECTIONS_PER_ADDRESS": "50"}
    ingress = start_ingress(env)
    resource.prlimit(ingress.proc.pid, resource.RLIMIT_NOFILE, (128, 128))

    # when one address opens 150 sockets and sends nothing,
    sockets = [attacker_socket(ingress.port) for _ in range(150)]
    try:
        time.sleep(0.5)
        # then the ingress still answers everyone else at once,
        for _ in range(5):
            answered_within(1, lambda: requests.get(f"{ingress.url}/healthz", timeout=5), 200)
        # having closed the sockets over the address's share.
        time.sleep(0.5)
        assert sum(closed_by_server(sock) for sock in sockets) == 100
    finally:
        for sock in sockets:
            sock.close()
