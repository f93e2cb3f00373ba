"""A fast local Braze/Brevo look-alike for the benchmark: it answers, counts, and enforces
Brevo's rate limit.

tests/fakes/destinations.py records every request with its headers on a
ThreadingHTTPServer (a thread per connection, http.server's parser); that is right for
tests and far too slow to measure a worker that should deliver tens of thousands of
events a second. This one is a single asyncio ``Protocol`` speaking just enough
HTTP/1.1 (keep-alive, Content-Length bodies) and keeps only counters.

What it answers (the status codes and bodies of the real services):

    POST /users/track                Braze: 201 {"message": "success", "attributes_processed": N}
                                     (401 without a bearer key, 400 without an attributes list)
    PUT  /v3/contacts/{identifier}   Brevo: 204
    POST /v3/contacts                Brevo: 201 {"id": N}
    POST /v3/contacts/batch          Brevo: 204
    anything else                    404

Brevo calls are limited per account (``api-key``) to ``brevo_limit`` calls in each fixed
window of ``brevo_window`` seconds (aligned to the clock, as Brevo's
``x-sib-ratelimit-reset`` -- seconds to the window's end -- suggests); a call over the
limit is answered 429 ``too_many_requests`` with the ``x-sib-ratelimit-*`` headers and
counted. Braze calls carry Braze's ``X-RateLimit-*`` headers (3,000 per 3 s) but are not
refused: the peak count per window is reported instead, so a result that a real
workspace would have throttled can be spotted.

Latency: an attributes object (Braze) or a contact's ``attributes`` (Brevo) may carry
``bench_enqueued_at`` / ``BENCH_ENQUEUED_AT``, the epoch seconds at which the benchmark
enqueued the event (bench/events.py maps a PMP preference value onto it). For every such
object in an accepted call the fake keeps ``receive time - enqueued time``.

Control API (not counted):

    GET  /_bench/stats[?samples=1]   counters per service; with samples=1 the latencies too
    POST /_bench/reset               forget everything

Run it as a process (the runner does)::

    python -m bench.fake --port 0 [--brevo-limit 10] [--brevo-window 1]

which prints ``listening on http://127.0.0.1:PORT`` once it accepts connections.
In-process (tests): ``with FakeThread(BenchFake()) as server: server.url ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

BRAZE_STAMP = "bench_enqueued_at"
BREVO_STAMP = BRAZE_STAMP.upper()  # Brevo attribute names are upper case (the worker does it)

BRAZE_LIMIT, BRAZE_WINDOW = 3000, 3.0  # /users/track: 3,000 requests per 3 s
BREVO_LIMIT, BREVO_WINDOW = 10, 1.0  # /v3/contacts/*: 10 requests per second, every plan
BRAZE_USER_KEYS = ("external_id", "braze_id", "user_alias", "email", "phone")

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

Answer = tuple[int, dict[str, str], Any]  # status, extra headers, JSON body (None: empty)


@dataclass
class ServiceStats:
    """What one service (Braze or Brevo) received since the last reset."""

    calls: int = 0
    accepted_calls: int = 0  # answered 2xx
    rate_limited: int = 0  # answered 429
    by_status: dict[int, int] = field(default_factory=dict)
    objects: int = 0  # users/contacts in accepted calls
    users: set[str] = field(default_factory=set)
    first_at: float | None = None
    last_at: float | None = None
    last_accepted_at: float | None = None
    peak_calls_per_window: int = 0  # most calls in one rate-limit window (any account)
    latencies: list[float] = field(default_factory=list)  # seconds, accepted objects only

    def as_dict(self, samples: bool) -> dict[str, Any]:
        data: dict[str, Any] = {
            "calls": self.calls,
            "accepted_calls": self.accepted_calls,
            "rate_limited": self.rate_limited,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "objects": self.objects,
            "users": len(self.users),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "last_accepted_at": self.last_accepted_at,
            "peak_calls_per_window": self.peak_calls_per_window,
            "stamped": len(self.latencies),
        }
        if samples:
            data["latencies"] = [round(x, 6) for x in self.latencies]
        return data


class FixedWindows:
    """Calls per key in fixed clock-aligned windows: how many so far in the current one."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._current: dict[str, tuple[int, int]] = {}  # key -> (window number, calls)

    def count(self, key: str, now: float) -> tuple[int, float]:
        """Count one call; return the calls in its window so far and the window's end."""
        number = math.floor(now / self.window)
        seen, calls = self._current.get(key, (number, 0))
        calls = calls + 1 if seen == number else 1
        self._current[key] = (number, calls)
        return calls, (number + 1) * self.window


class BenchFake:
    """The answers and the counters, without any I/O (``FakeServer`` serves them)."""

    def __init__(
        self,
        brevo_limit: int = BREVO_LIMIT,
        brevo_window: float = BREVO_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.brevo_limit = brevo_limit
        self.brevo_window = brevo_window
        self.clock = clock
        self.reset()

    def reset(self) -> None:
        self.services = {"braze": ServiceStats(), "brevo": ServiceStats()}
        self._braze_windows = FixedWindows(BRAZE_WINDOW)
        self._brevo_windows = FixedWindows(self.brevo_window)
        self._next_contact_id = 1

    def stats(self, samples: bool = False) -> dict[str, Any]:
        return {
            "brevo_limit": self.brevo_limit,
            "brevo_window": self.brevo_window,
            **{name: s.as_dict(samples) for name, s in self.services.items()},
        }

    # -- answering ------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """Answer one request (``headers`` with lower-case names)."""
        url = urlsplit(target)
        if url.path.startswith("/_bench/"):
            return self._control(method, url.path, dict(parse_qsl(url.query)))
        now = self.clock()
        if url.path == "/v3" or url.path.startswith("/v3/"):
            stats = self.services["brevo"]
            answer = self._brevo(method, url.path, headers, body, now, stats)
        else:
            stats = self.services["braze"]
            answer = self._braze(method, url.path, headers, body, now, stats)
        status = answer[0]
        stats.calls += 1
        stats.by_status[status] = stats.by_status.get(status, 0) + 1
        stats.first_at = stats.first_at or now
        stats.last_at = now
        if 200 <= status < 300:
            stats.accepted_calls += 1
            stats.last_accepted_at = now
        elif status == 429:
            stats.rate_limited += 1
        return answer

    def _braze(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        now: float,
        stats: ServiceStats,
    ) -> Answer:
        if (method, path) != ("POST", "/users/track"):
            return 404, {}, {"message": "Not Found"}
        calls, window_end = self._braze_windows.count("workspace", now)
        stats.peak_calls_per_window = max(stats.peak_calls_per_window, calls)
        rate = {
            "X-RateLimit-Limit": str(BRAZE_LIMIT),
            "X-RateLimit-Remaining": str(max(0, BRAZE_LIMIT - calls)),
            "X-RateLimit-Reset": str(math.ceil(window_end)),  # epoch seconds
        }
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return 401, rate, {"message": "Invalid API Key"}
        body = _json(raw)
        objects = body.get("attributes") if isinstance(body, dict) else None
        if not isinstance(objects, list):
            return 400, rate, {"message": "Request body must be JSON with an 'attributes' list"}
        errors = []
        for index, obj in enumerate(objects):
            if not isinstance(obj, dict) or not any(k in obj for k in BRAZE_USER_KEYS):
                errors.append(
                    {
                        "type": "All objects must contain an external_id, braze_id, "
                        "user_alias, email or phone",
                        "input_array": "attributes",
                        "index": index,
                    }
                )
                continue
            self._received(stats, str(obj.get("external_id", obj.get("email", ""))), obj, now)
        answer: dict[str, Any] = {
            "message": "success",
            "attributes_processed": len(objects) - len(errors),
        }
        if errors:
            answer["errors"] = errors
        return 201, rate, answer

    def _brevo(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        raw: bytes,
        now: float,
        stats: ServiceStats,
    ) -> Answer:
        parts = path.split("/")  # "", "v3", "contacts", ...
        if len(parts) < 3 or parts[2] != "contacts" or len(parts) > 4:
            return 404, {}, {"code": "not_found", "message": "Invalid route"}
        key = headers.get("api-key", "")
        if not key:
            return 401, {}, {"code": "unauthorized", "message": "Key not found"}
        calls, window_end = self._brevo_windows.count(key, now)
        stats.peak_calls_per_window = max(stats.peak_calls_per_window, calls)
        rate = {
            "x-sib-ratelimit-limit": str(self.brevo_limit),
            "x-sib-ratelimit-remaining": str(max(0, self.brevo_limit - calls)),
            "x-sib-ratelimit-reset": str(max(1, math.ceil(window_end - now))),  # seconds
        }
        if calls > self.brevo_limit:
            return 429, rate, {"code": "too_many_requests", "message": "Too many requests"}
        body = _json(raw)
        if not isinstance(body, dict):
            return 400, rate, {"code": "invalid_parameter", "message": "body must be an object"}
        if len(parts) == 4 and parts[3] == "batch" and method == "POST":
            contacts = body.get("contacts")
            if not isinstance(contacts, list):
                return 400, rate, {"code": "missing_parameter", "message": "contacts required"}
            for contact in contacts:
                user = contact.get("email") or contact.get("ext_id") or contact.get("id")
                self._received(stats, str(user), contact.get("attributes") or {}, now)
            return 204, rate, None
        if len(parts) == 4 and method == "PUT":
            self._received(stats, unquote(parts[3]), body.get("attributes") or {}, now)
            return 204, rate, None
        if len(parts) == 3 and method == "POST":
            user = body.get("email") or body.get("ext_id")
            if not user:
                return 400, rate, {"code": "missing_parameter", "message": "email or ext_id"}
            self._received(stats, str(user), body.get("attributes") or {}, now)
            self._next_contact_id += 1
            return 201, rate, {"id": self._next_contact_id - 1}
        return 404, {}, {"code": "not_found", "message": "Invalid route"}

    def _received(self, stats: ServiceStats, user: str, fields: Any, now: float) -> None:
        stats.objects += 1
        stats.users.add(user)
        if not isinstance(fields, dict):
            return
        stamp = fields.get(BRAZE_STAMP, fields.get(BREVO_STAMP))
        if stamp is not None:
            with contextlib.suppress(TypeError, ValueError):
                stats.latencies.append(now - float(stamp))

    def _control(self, method: str, path: str, query: dict[str, str]) -> Answer:
        if (method, path) == ("GET", "/_bench/stats"):
            return 200, {}, self.stats(samples=query.get("samples") == "1")
        if (method, path) == ("POST", "/_bench/reset"):
            self.reset()
            return 200, {}, {"ok": True}
        return 404, {}, {"error": f"no control route {method} {path}"}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


# -- HTTP/1.1 over asyncio ---------------------------------------------------------------------


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Connection(asyncio.Protocol):
    """One keep-alive client connection: parse requests as they arrive, answer in order."""

    def __init__(self, fake: BenchFake, live: set[_Connection]) -> None:
        self.fake = fake
        self.live = live
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.live.add(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and self._answer_one():
            pass

    def _answer_one(self) -> bool:
        """Answer the first complete request in the buffer; False when none is complete."""
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self._send(431, {}, {"message": "headers too large"}, keep_alive=False)
            return False
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._send(400, {}, {"message": "bad request line"}, keep_alive=False)
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._send(501, {}, {"message": "chunked bodies are not supported"}, keep_alive=False)
            return False
        try:
            length = int(headers.get("content-length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(400, {}, {"message": "bad Content-Length"}, keep_alive=False)
            return False
        start = end + 4
        if len(self.buffer) < start + length:
            return False
        body = bytes(self.buffer[start : start + length])
        del self.buffer[: start + length]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
        status, extra, payload = self.fake.handle(method, target, headers, body)
        self._send(status, extra, payload, keep_alive)
        return keep_alive

    def _send(self, status: int, headers: dict[str, str], payload: Any, keep_alive: bool) -> None:
        assert self.transport is not None
        data = b"" if payload is None else json.dumps(payload).encode()
        head = [f"HTTP/1.1 {status} {_reason(status)}", f"Content-Length: {len(data)}"]
        if payload is not None:
            head.append("Content-Type: application/json")
        head.extend(f"{name}: {value}" for name, value in headers.items())
        if not keep_alive:
            head.append("Connection: close")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + data)
        if not keep_alive:
            self.transport.close()
            self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.live.discard(self)


async def serve(
    fake: BenchFake, host: str = "127.0.0.1", port: int = 0, live: set[_Connection] | None = None
) -> asyncio.Server:
    """Listen; ``live`` collects the open connections (Server.close leaves them open)."""
    loop = asyncio.get_running_loop()
    connections = set() if live is None else live
    # A large backlog: a worker pool opening its connections at once must not be refused.
    return await loop.create_server(
        lambda: _Connection(fake, connections), host, port, backlog=1024
    )


class FakeThread:
    """Serve a ``BenchFake`` on an event loop in a daemon thread (tests, in-process use)."""

    def __init__(self, fake: BenchFake, host: str = "127.0.0.1", port: int = 0) -> None:
        self.fake = fake
        self._address = (host, port)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()
        self.url = ""

    def start(self) -> FakeThread:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            serve(self.fake, *self._address, live=self._live), self._loop
        )
        self._server = future.result(timeout=10)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            asyncio.run_coroutine_threadsafe(self._close(self._server), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    async def _close(self, server: asyncio.Server) -> None:
        server.close()
        for connection in list(self._live):
            connection.close()
        await asyncio.sleep(0)  # let the transports finish closing
        await server.wait_closed()

    def __enter__(self) -> FakeThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _main(args: argparse.Namespace) -> None:
    fake = BenchFake(brevo_limit=args.brevo_limit, brevo_window=args.brevo_window)
    server = await serve(fake, args.host, args.port)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fast fake Braze/Brevo for the benchmark.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--brevo-limit", type=int, default=BREVO_LIMIT, help="calls per window")
    parser.add_argument("--brevo-window", type=float, default=BREVO_WINDOW, help="seconds")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
