"""The fake Braze, Brevo and PMP (tests/fakes/vendors.py) on a local threaded HTTP server, with
every request recorded and a control API to script failures: the next N calls fail, an
outage until recovery, a slow answer, a 429 storm.

In-process, from tests::

    fake = FakeDestinations().start()
    fake.fail_next("braze", 2, status=503)
    ...  # point the worker at fake.url (Braze), f"{fake.url}/v3" (Brevo) and
         # f"{fake.url}/pmp/v1" (the PMP's api_url)
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
    POST /_fake/brevo_contacts {"identifier": "u-1", "ext_id": "..."}   ext_id optional
    POST /_fake/strict_contacts {"strict": true}
    POST /_fake/braze_refuse  {"external_id": "u-7", "message": "..."}   400 to every call
                                                                         holding that user
    GET  /_fake/brevo_webhooks                   {"webhooks": [...]}
    GET  /_fake/pmp_events                       {"events": [...]}, as the PMP created them
    POST /_fake/pmp_users     {"organization_user_id": "u-1", "consents": {...}}
    POST /_fake/pmp_expire_tokens                every token issued so far answers 401
    POST /_fake/braze_profile {"external_id": "u-1", "fields": {"email_subscribe": ...}}
    POST /_fake/brevo_contact {"identifier": "u-1", "fields": {"emailBlacklisted": true}}
                              a profile or contact changed behind prefsync's back (drift)

What Braze and Brevo answer, and the rate limits: tests/fakes/vendors.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.vendors import Answer, FakeVendors, parse_json


class FakeDestinations(FakeVendors):
    """Braze, Brevo and the PMP on one local HTTP server, with recorded calls and scripted
    failures."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        strict_contacts: bool = False,
        log_requests: bool = False,
        pmp_page_size: int = 100,
    ) -> None:
        super().__init__(strict_contacts=strict_contacts, pmp_page_size=pmp_page_size)
        self._address = (host, port)
        self._log_requests = log_requests
        self._server: _Server | None = None
        self._bound: tuple[str, int] | None = None
        self._thread: threading.Thread | None = None

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

    # -- control API ---------------------------------------------------------------------------

    def control(self, method: str, path: str, query: dict[str, str], raw: bytes) -> Answer:
        """Answer a ``/_fake/...`` request (see the module docstring)."""
        body = parse_json(raw) or {}
        try:
            if (method, path) == ("GET", "/_fake/calls"):
                return Answer(200, [c.to_dict() for c in self.calls(query.get("service"))])
            if (method, path) == ("GET", "/_fake/braze_deleted"):
                return Answer(200, {"external_ids": self.braze_deleted})
            if (method, path) == ("GET", "/_fake/brevo_webhooks"):
                return Answer(200, {"webhooks": self.brevo_webhooks})
            if (method, path) == ("GET", "/_fake/pmp_events"):
                return Answer(200, {"events": self.pmp_events})
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
                "/_fake/brevo_contacts": lambda: self.add_brevo_contact(
                    body["identifier"], body.get("ext_id")
                ),
                "/_fake/braze_refuse": lambda: self.refuse_braze_user(
                    body["external_id"], body.get("message", "Invalid user object")
                ),
                "/_fake/pmp_users": lambda: self.add_pmp_user(body),
                "/_fake/braze_profile": lambda: self.edit_braze_profile(
                    body["external_id"], body["fields"]
                ),
                "/_fake/brevo_contact": lambda: self.edit_brevo_contact(
                    body["identifier"], body["fields"]
                ),
                "/_fake/pmp_expire_tokens": lambda: self.expire_pmp_tokens(),
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
        pairs = parse_qsl(url.query, keep_blank_values=True)
        query: dict[str, Any] = dict(pairs)
        # A name ending in [] is a list (Braze's external_id[]): every value of it.
        query |= {name: [v for n, v in pairs if n == name] for name in query if name.endswith("[]")}
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
