"""The HTTP server's limits (worker.ingress.server) on a stand-in transport: header bytes,
read deadlines, connections per address. The attacks themselves, on a real `prefsync
serve`, are in tests/e2e/test_ingress_abuse.py."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import pytest
from uvicorn.config import Config
from uvicorn.server import ServerState

from worker.ingress.server import MAX_HEADER_BYTES, GuardedHttpToolsProtocol, Limits

LIMITS = Limits(
    read_timeout=0.05,
    max_connections=10,
    per_address=2,
    exempt=(ipaddress.ip_network("10.0.0.0/8"),),
)


class Transport(asyncio.Transport):
    """What a protocol writes, and whether it closed the connection."""

    def __init__(self, peer: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.peer = peer
        self.loop = loop
        self.written = b""
        self.closed = False
        self.protocol: GuardedHttpToolsProtocol | None = None

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": (self.peer, 40000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written += data

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)  # as asyncio's do

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


async def ok(scope, receive, send) -> None:
    """The app: reads the whole body, answers 204."""
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def connect(loop: asyncio.AbstractEventLoop):
    config = Config(app=ok, lifespan="off", log_config=None)
    config.load()
    state = ServerState()

    def connect(peer: str = "203.0.113.9") -> Transport:
        protocol = GuardedHttpToolsProtocol(config, state, {}, _loop=loop, limits=LIMITS)
        transport = Transport(peer, loop)
        transport.protocol = protocol
        protocol.connection_made(transport)
        return transport

    return connect


def settle(loop: asyncio.AbstractEventLoop, seconds: float = 0.01) -> None:
    loop.run_until_complete(asyncio.sleep(seconds))


def test_a_header_that_keeps_growing_is_a_431_and_the_connection_closed(connect, loop) -> None:
    transport = connect()
    transport.protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")

    sent = 0
    while not transport.closed:
        transport.protocol.data_received(b"a" * 16384)
        sent += 16384

    assert transport.written.startswith(b"HTTP/1.1 431")
    assert sent <= MAX_HEADER_BYTES + 16384


def test_a_large_body_that_comes_with_its_headers_is_not_taken_for_a_header(connect, loop) -> None:
    transport = connect()
    body = b"x" * (4 * MAX_HEADER_BYTES)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)

    transport.protocol.data_received(head + body)
    settle(loop)

    assert transport.written.startswith(b"HTTP/1.1 204")
    assert not transport.closed


def test_a_connection_that_never_finishes_its_headers_is_closed(connect, loop) -> None:
    silent, slow = connect(), connect("198.51.100.1")
    slow.protocol.data_received(b"GET / HTTP/1.1\r\n")
    settle(loop, LIMITS.read_timeout / 2)
    slow.protocol.data_received(b"X-Slow: 1\r\n")  # a byte now and then does not help

    settle(loop, LIMITS.read_timeout)

    assert silent.closed and slow.closed
    assert silent.written == slow.written == b""


def test_a_slow_body_is_closed_and_a_kept_alive_connection_gets_a_new_deadline(
    connect, loop
) -> None:
    transport = connect()
    transport.protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    settle(loop, LIMITS.read_timeout * 2)  # answered: the deadline is off, keep-alive on
    assert transport.written.startswith(b"HTTP/1.1 204") and not transport.closed

    transport.protocol.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n")
    settle(loop, LIMITS.read_timeout * 2)

    assert transport.closed


def test_connections_over_an_address_share_are_closed_but_a_trusted_proxy_has_none(
    connect, loop
) -> None:
    held = [connect("203.0.113.9") for _ in range(3)]
    proxied = [connect("10.0.0.5") for _ in range(4)]

    assert [t.closed for t in held] == [False, False, True]
    assert not any(t.closed for t in proxied)
    assert not connect("198.51.100.1").closed  # another address has its own share
    settle(loop)  # the closed one is gone
    # The process's own cap: 10.
    assert [connect("10.0.0.5").closed for _ in range(4)] == [False, False, False, True]
