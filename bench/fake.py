"""The fake Braze/Brevo (tests/fakes/vendors.py) on a fast server, for the benchmark.

tests/fakes/destinations.py serves the same answers on a ThreadingHTTPServer (a thread per
connection, http.server's parser) and keeps every call with its headers and body; that is
right for tests and far too slow to measure a worker that should deliver tens of thousands
of events a second. This one is a single asyncio ``Protocol`` speaking just enough
HTTP/1.1 (keep-alive, Content-Length bodies) and keeps only the counters: calls, statuses,
429s, users delivered, the peak calls per rate-limit window, and the latency of every
object stamped with its enqueue time (bench/events.py). Brevo's limit (10 calls per second
per account unless ``--brevo-limit``/``--brevo-window`` say otherwise) is enforced with
real 429s, Braze's reported.

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
import json
import signal
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.fakes.vendors import BREVO_LIMIT, BREVO_WINDOW, Answer, FakeVendors

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


class BenchFake(FakeVendors):
    """The vendors' answers keeping counters only, and the benchmark's control routes."""

    def __init__(
        self,
        brevo_limit: int = BREVO_LIMIT,
        brevo_window: float = BREVO_WINDOW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            brevo_limit=brevo_limit, brevo_window=brevo_window, keep_calls=False, clock=clock
        )

    def respond(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Answer:
        """Answer one request (``headers`` with lower-case names)."""
        url = urlsplit(target)
        query = dict(parse_qsl(url.query, keep_blank_values=True))
        if (method, url.path) == ("GET", "/_bench/stats"):
            return Answer(200, self.stats(samples=query.get("samples") == "1"))
        if (method, url.path) == ("POST", "/_bench/reset"):
            self.reset()
            return Answer(200, {"ok": True})
        if url.path.startswith("/_bench/"):
            return Answer(404, {"error": f"no control route {method} {url.path}"})
        # No control route scripts a delay here: every answer goes out at once.
        answer, _ = self.handle(method, url.path, query, headers, body)
        return answer


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
        answer = self.fake.respond(method, target, headers, body)
        if answer.status == 0:  # a scripted network error
            self.close()
            return False
        self._send(answer.status, answer.headers, answer.body, keep_alive)
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
