"""A local look-alike of the Braze and Brevo (Sendinblue) REST APIs.

It answers the way the real services do (as the project's Braze and Sendinblue notes say),
records every request, and lets a test script failures: the next N calls fail, an outage
until recovery, a slow answer.  Braze and Brevo share one server; the path decides which
service a request is for (``/v3/...`` is Brevo, anything else Braze).

In-process, from tests::

    fake = FakeDestinations().start()
    fake.fail_next("braze", 2, status=503)
    ...  # point the worker at fake.url (Braze) and f"{fake.url}/v3" (Brevo)
    assert [c.status for c in fake.calls("braze")] == [503, 503, 201]
    fake.stop()

As a separate process (demo, docker-compose, worker subprocess tests)::

    python -m tests.fakes.destinations --host 127.0.0.1 --port 8080

which is then driven through its control API::

    GET  /_fake/calls[?service=braze]      recorded calls, oldest first
    POST /_fake/reset
    POST /_fake/outage        {"service": "braze", "status": 503}
    POST /_fake/recover       {"service": "braze"}
    POST /_fake/fail_next     {"service": "brevo", "count": 2, "status": 429, "headers": {...},
                               "body": {...}}
    POST /_fake/delay         {"service": "braze", "seconds": 1.5}
    POST /_fake/throttle      {"service": "braze", "seconds": 2}   429 until then (0 lifts it)
    GET  /_fake/brevo_contacts                   {"strict": bool, "contacts": [...]}
    GET  /_fake/braze_deleted                    {"external_ids": [...]}
    POST /_fake/brevo_contacts {"identifier": "u-1"}
    POST /_fake/strict_contacts {"strict": true}
    POST /_fake/braze_refuse  {"external_id": "u-7", "message": "..."}   400 to every call
                                                                         holding that user

Braze refusals: a user named by :meth:`FakeDestinations.refuse_braze_user` makes every
``/users/track`` call that holds it answer 400 as a whole (as Braze does for a malformed
object), whatever the other objects of the call.

Brevo contacts: by default every contact is known, so ``PUT /v3/contacts/{id}`` answers 204.
With ``strict_contacts`` only contacts added with :meth:`FakeDestinations.add_brevo_contact`
or created by ``POST /v3/contacts`` are known; any other answers 404 ``document_not_found``.
``DELETE /v3/contacts/{id}`` answers 204 for a known contact, which is then unknown (until
created again) in either mode, and 404 ``document_not_found`` for an unknown one.

Erasures: Braze ``POST /users/delete`` (``{"external_ids": [...]}``, up to 50) answers 201
``{"deleted": n, "message": "success"}``; the fake knows no Braze users, so it counts every
id as queued, and remembers them (``braze_deleted``).

A scripted answer (``fail_next``, ``outage``, ``throttle``) replaces the normal one, before
any check of credentials or body.  Status 0 closes the connection without answering (a
network error).  A delayed answer has already taken effect when the delay starts, as when a
real service processes a request whose client then times out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

SERVICES = ("braze", "brevo")

# Rate-limit headers as the real services send them; the fake reports but never enforces them.
BRAZE_RATE_LIMIT, BRAZE_RATE_WINDOW = 3000, 3.0  # /users/track: 3,000 requests per 3 s
BREVO_RATE_LIMIT, BREVO_RATE_WINDOW = 10, 1.0  # /v3/contacts/*: 10 requests per second

BREVO_IDENTIFIER_TYPES = {"email_id", "ext_id", "phone_id", "contact_id", "whatsapp_id"}
BREVO_ERROR_CODES = {
    400: "invalid_parameter",
    401: "unauthorized",
    402: "not_enough_credits",
    403: "permission_denied",
    404: "document_not_found",
    425: "account_in_process",
    429: "too_many_requests",
}
BRAZE_USER_KEYS = ("external_id", "braze_id", "user_alias", "email", "phone")

CONTACT_PATH = re.compile(r"^/v3/contacts/(?P<identifier>[^/]+)$")


@dataclass
class Call:
    """One request the fake received, and the status it answered."""

    service: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at: float
    status: int
    identifier: str | None = None  # Brevo contact calls: the URL-decoded identifier
    answer_headers: dict[str, str] = field(default_factory=dict)  # what the fake answered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def _service_for(path: str) -> str:
    return "brevo" if path == "/v3" or path.startswith("/v3/") else "braze"


def _check_service(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
    return service


def _error_body(service: str, status: int, message: str | None = None) -> dict[str, str]:
    message = message or HTTPStatus(status).phrase
    if service == "braze":
        return {"message": message}
    return {"code": BREVO_ERROR_CODES.get(status, "internal_error"), "message": message}


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class FakeDestinations:
    """Braze and Brevo on one local HTTP server, with recorded calls and scripted failures."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        strict_contacts: bool = False,
        log_requests: bool = False,
    ) -> None:
        self._address = (host, port)
        self._initial_strict = strict_contacts
        self._log_requests = log_requests
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._bound: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None
        self._clear()

    def _clear(self) -> None:
        self._calls: list[Call] = []
        self._scripted: dict[str, deque[Answer]] = {s: deque() for s in SERVICES}
        self._outages: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self._throttled_until: dict[str, float] = {}  # epoch seconds
        self._windows: dict[str, tuple[float, int]] = {}
        self._contacts: dict[str, int] = {}  # identifier -> Brevo contact id
        self._braze_refused: dict[str, str] = {}  # external_id -> the 400's message
        self._brevo_deleted: set[str] = set()  # identifiers deleted, unknown until created
        self._braze_deleted: list[str] = []  # external ids /users/delete was given
        self._next_contact_id = 1
        self.strict_contacts = self._initial_strict

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> FakeDestinations:
        """Serve in a daemon thread; after a stop, on the same port as before."""
        self._server = _Server(self._bound or self._address, _Handler, self)
        self._bound = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() waits for one poll: keep it short
            name="fake-destinations",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> FakeDestinations:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def host_port(self) -> str:
        """Where it listens (or listened, once stopped)."""
        if self._bound is None:
            raise RuntimeError("FakeDestinations was never started")
        host, port = self._bound
        return f"{host}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"

    # -- inspection and scripting (thread-safe) --------------------------------------------

    def calls(self, service: str | None = None) -> list[Call]:
        if service is not None:
            _check_service(service)
        with self._lock:
            return [c for c in self._calls if service is None or c.service == service]

    def reset(self) -> None:
        """Forget calls, scripted failures, delays and contacts."""
        with self._lock:
            self._clear()

    def fail_next(
        self,
        service: str,
        count: int,
        status: int = 503,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """The next ``count`` calls of ``service`` answer ``status`` (0: connection dropped)."""
        _check_service(service)
        if body is None and status >= 400:
            body = _error_body(service, status)
        with self._lock:
            for _ in range(count):
                self._scripted[service].append(Answer(status, body, dict(headers or {})))

    def outage(self, service: str, status: int = 503) -> None:
        """Every call of ``service`` answers ``status`` until :meth:`recover`."""
        with self._lock:
            self._outages[_check_service(service)] = status

    def recover(self, service: str) -> None:
        with self._lock:
            self._outages.pop(_check_service(service), None)

    def throttle(self, service: str, seconds: float) -> None:
        """For the next ``seconds``, every call of ``service`` answers 429 with rate-limit
        headers whose reset is the end of that time (0 lifts it): a 429 storm that tells
        clients exactly when to come back."""
        with self._lock:
            if seconds > 0:
                self._throttled_until[_check_service(service)] = time.time() + seconds
            else:
                self._throttled_until.pop(_check_service(service), None)

    def set_delay(self, service: str, seconds: float) -> None:
        """Answer every call of ``service`` after ``seconds`` (0 for no delay)."""
        with self._lock:
            self._delays[_check_service(service)] = seconds

    def refuse_braze_user(self, external_id: str, message: str = "Invalid user object") -> None:
        """Every ``/users/track`` call holding ``external_id`` answers 400 ``message``."""
        with self._lock:
            self._braze_refused[external_id] = message

    def add_brevo_contact(self, identifier: str) -> None:
        with self._lock:
            self._add_contact(identifier)

    @property
    def brevo_contacts(self) -> set[str]:
        with self._lock:
            return set(self._contacts)

    @property
    def braze_deleted(self) -> list[str]:
        """Every external id Braze's /users/delete was given, in order."""
        with self._lock:
            return list(self._braze_deleted)

    # -- answering ---------------------------------------------------------------------------

    def _add_contact(self, identifier: str) -> int:
        self._brevo_deleted.discard(identifier)
        if identifier not in self._contacts:
            self._contacts[identifier] = self._next_contact_id
            self._next_contact_id += 1
        return self._contacts[identifier]

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[Answer, float]:
        """Record one call to a destination; return the answer and the delay before it."""
        service = _service_for(path)
        body = _parse_json(raw)
        match = CONTACT_PATH.match(path)
        identifier = unquote(match["identifier"]) if match else None
        with self._lock:
            answer = self._scripted_answer(service)
            if answer is None and service == "braze":
                answer = self._braze(method, path, headers, body)
            elif answer is None:
                answer = self._brevo(method, path, query, headers, body, identifier)
            answer.headers = {**self._rate_headers(service, answer.status), **answer.headers}
            call = Call(
                service=service,
                method=method,
                path=path,
                query=query,
                headers=headers,
                body=body,
                at=time.time(),
                status=answer.status,
                identifier=identifier,
                answer_headers=dict(answer.headers),
            )
            self._calls.append(call)
            return answer, self._delays.get(service, 0.0)

    def _scripted_answer(self, service: str) -> Answer | None:
        if service in self._outages:
            status = self._outages[service]
            return Answer(status, _error_body(service, status) if status else None)
        until = self._throttled_until.get(service, 0.0)
        if time.time() < until:
            return Answer(429, _error_body(service, 429), self._reset_headers(service, until))
        if self._scripted[service]:
            scripted = self._scripted[service].popleft()
            return Answer(scripted.status, scripted.body, dict(scripted.headers))
        return None

    def _rate_headers(self, service: str, status: int) -> dict[str, str]:
        limit, window = (
            (BRAZE_RATE_LIMIT, BRAZE_RATE_WINDOW)
            if service == "braze"
            else (BREVO_RATE_LIMIT, BREVO_RATE_WINDOW)
        )
        now = time.time()
        start, count = self._windows.get(service, (0.0, 0))
        if now >= start + window:
            start, count = now, 0
        count += 1
        self._windows[service] = (start, count)
        remaining = 0 if status == 429 else max(0, limit - count)
        if service == "braze":  # reset: epoch seconds of the window's end
            return {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(remaining),
                "X-RateLimit-Reset": str(math.ceil(start + window)),
            }
        return {  # reset: seconds until the window's end
            "x-sib-ratelimit-limit": str(limit),
            "x-sib-ratelimit-remaining": str(remaining),
            "x-sib-ratelimit-reset": str(math.ceil(start + window - now)),
        }

    @staticmethod
    def _reset_headers(service: str, until: float) -> dict[str, str]:
        if service == "braze":  # epoch seconds, as Braze sends them
            return {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(math.ceil(until))}
        return {  # seconds from now, as Brevo sends them
            "x-sib-ratelimit-remaining": "0",
            "x-sib-ratelimit-reset": str(math.ceil(until - time.time())),
        }

    def _braze(self, method: str, path: str, headers: dict[str, str], body: Any) -> Answer:
        if (method, path) == ("POST", "/users/delete"):
            return self._braze_delete(headers, body)
        if (method, path) != ("POST", "/users/track"):
            return Answer(404, _error_body("braze", 404))
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return Answer(401, {"message": "Invalid API Key"})
        if not isinstance(body, dict) or not isinstance(body.get("attributes"), list):
            return Answer(400, {"message": "Request body must be JSON with an 'attributes' list"})
        refused = [
            self._braze_refused[obj.get("external_id")]
            for obj in body["attributes"]
            if isinstance(obj, dict) and obj.get("external_id") in self._braze_refused
        ]
        if refused:
            return Answer(400, {"message": refused[0]})
        errors = [
            {
                "type": "All objects must contain an external_id, braze_id, user_alias, "
                "email or phone",
                "input_array": "attributes",
                "index": index,
            }
            for index, obj in enumerate(body["attributes"])
            if not isinstance(obj, dict) or not any(key in obj for key in BRAZE_USER_KEYS)
        ]
        answer: dict[str, Any] = {
            "message": "success",
            "attributes_processed": len(body["attributes"]) - len(errors),
        }
        if errors:
            answer["errors"] = errors
        return Answer(201, answer)

    def _braze_delete(self, headers: dict[str, str], body: Any) -> Answer:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth.removeprefix("Bearer ").strip():
            return Answer(401, {"message": "Invalid API Key"})
        ids = body.get("external_ids") if isinstance(body, dict) else None
        kinds = [k for k in ("external_ids", "user_aliases", "braze_ids") if k in (body or {})]
        if len(kinds) != 1 or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return Answer(400, {"message": "Request must hold one list of external_ids"})
        if len(ids) > 50:
            return Answer(400, {"message": "Too many external_ids: at most 50"})
        self._braze_deleted += ids
        return Answer(201, {"deleted": len(ids), "message": "success"})

    def _brevo_delete(self, query: dict[str, str], identifier: str) -> Answer:
        identifier_type = query.get("identifierType")
        if identifier_type is not None and identifier_type not in BREVO_IDENTIFIER_TYPES:
            return Answer(400, _error_body("brevo", 400, "identifierType is not valid"))
        known = identifier in self._contacts or not (
            self.strict_contacts or identifier in self._brevo_deleted
        )
        if not known:
            return Answer(404, {"code": "document_not_found", "message": "Contact does not exist"})
        self._contacts.pop(identifier, None)
        self._brevo_deleted.add(identifier)
        return Answer(204)

    def _brevo(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        identifier: str | None,
    ) -> Answer:
        update = identifier is not None and method == "PUT"
        delete = identifier is not None and method == "DELETE"
        if not (update or delete) and (method, path) != ("POST", "/v3/contacts"):
            return Answer(404, {"code": "not_found", "message": "Invalid route"})
        if not headers.get("api-key"):
            return Answer(401, {"code": "unauthorized", "message": "Key not found"})
        if delete:
            return self._brevo_delete(query, identifier)
        if not isinstance(body, dict):
            return Answer(400, _error_body("brevo", 400, "Request body must be a JSON object"))
        return self._brevo_update(query, identifier) if update else self._brevo_create(body)

    def _brevo_update(self, query: dict[str, str], identifier: str) -> Answer:
        identifier_type = query.get("identifierType")
        if identifier_type is not None and identifier_type not in BREVO_IDENTIFIER_TYPES:
            return Answer(400, _error_body("brevo", 400, "identifierType is not valid"))
        unknown = self.strict_contacts or identifier in self._brevo_deleted
        if unknown and identifier not in self._contacts:
            return Answer(404, {"code": "document_not_found", "message": "Contact does not exist"})
        return Answer(204)

    def _brevo_create(self, body: dict[str, Any]) -> Answer:
        new_identifier = body.get("email") or body.get("ext_id")
        if not new_identifier:
            return Answer(
                400, {"code": "missing_parameter", "message": "email or ext_id is required"}
            )
        if new_identifier in self._contacts:
            if body.get("updateEnabled"):
                return Answer(204)
            return Answer(400, {"code": "duplicate_parameter", "message": "Contact already exist"})
        return Answer(201, {"id": self._add_contact(new_identifier)})

    # -- control API ---------------------------------------------------------------------------

    def control(self, method: str, path: str, query: dict[str, str], raw: bytes) -> Answer:
        """Answer a ``/_fake/...`` request (see the module docstring)."""
        body = _parse_json(raw) or {}
        try:
            if (method, path) == ("GET", "/_fake/calls"):
                return Answer(200, [c.to_dict() for c in self.calls(query.get("service"))])
            if (method, path) == ("GET", "/_fake/braze_deleted"):
                return Answer(200, {"external_ids": self.braze_deleted})
            if (method, path) == ("GET", "/_fake/brevo_contacts"):
                contacts = sorted(self.brevo_contacts)
                return Answer(200, {"strict": self.strict_contacts, "contacts": contacts})
            actions = {
                "/_fake/reset": lambda: self.reset(),
                "/_fake/outage": lambda: self.outage(body["service"], body.get("status", 503)),
                "/_fake/recover": lambda: self.recover(body["service"]),
                "/_fake/fail_next": lambda: self.fail_next(
                    body["service"],
                    body.get("count", 1),
                    body.get("status", 503),
                    body.get("headers"),
                    body.get("body"),
                ),
                "/_fake/delay": lambda: self.set_delay(body["service"], body["seconds"]),
                "/_fake/throttle": lambda: self.throttle(body["service"], body["seconds"]),
                "/_fake/brevo_contacts": lambda: self.add_brevo_contact(body["identifier"]),
                "/_fake/braze_refuse": lambda: self.refuse_braze_user(
                    body["external_id"], body.get("message", "Invalid user object")
                ),
                "/_fake/strict_contacts": lambda: setattr(
                    self, "strict_contacts", bool(body["strict"])
                ),
            }
            if method != "POST" or path not in actions:
                return Answer(404, {"error": f"no control route {method} {path}"})
            actions[path]()
            return Answer(200, {"ok": True})
        except (KeyError, TypeError, ValueError) as exc:
            return Answer(400, {"error": f"bad control request: {exc!r}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, fake: FakeDestinations) -> None:
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # A client that gave up (timeout) or a dropped connection is expected here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Drop kept-alive connections, so a stopped fake answers nobody."""
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real services
    server: _Server

    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def _handle(self) -> None:
        url = urlsplit(self.path)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        fake = self.server.fake
        if url.path.startswith("/_fake/"):
            answer, delay = fake.control(self.command, url.path, query, raw), 0.0
        else:
            headers = {name.lower(): value for name, value in self.headers.items()}
            answer, delay = fake.handle(self.command, url.path, query, headers, raw)
        if delay:
            time.sleep(delay)
        if answer.status == 0:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = b"" if answer.body is None else json.dumps(answer.body).encode()
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake._log_requests:
            super().log_message(format, *args)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Local Braze/Brevo look-alike.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument(
        "--strict-contacts",
        action="store_true",
        help="Brevo knows only contacts added or created (others answer 404)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not log each request")
    args = parser.parse_args(argv)

    # As PID 1 in a container SIGTERM is ignored unless handled.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    fake = FakeDestinations(args.host, args.port, args.strict_contacts, not args.quiet).start()
    print(f"fake destinations on {fake.url} (Braze: {fake.url}, Brevo: {fake.url}/v3)", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
