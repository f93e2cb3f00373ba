"""The HTTP server's own limits: uvicorn's httptools protocol with the bounds uvicorn does
not set (docs/security.md, "The ingress under abuse").

uvicorn closes a connection only when it idles after a response (``timeout_keep_alive``):
a client that never finishes its headers, or its body, holds its socket for ever, and
httptools buffers a header however long it grows. So each connection here has

- a read deadline: a request's headers must be in within ``PREFSYNC_INGRESS_READ_TIMEOUT``
  of the connection (or of the request's first byte), and its body within as long again;
  else the connection is closed (slowloris, slow bodies);
- a cap on header bytes (``MAX_HEADER_BYTES``): over it, ``431`` and the connection closed;
- a place: over ``PREFSYNC_INGRESS_MAX_CONNECTIONS`` in this process, or
  ``PREFSYNC_INGRESS_MAX_CONNECTIONS_PER_ADDRESS`` from one address (trusted proxies
  excepted: every caller behind them shares their address), a new connection is closed
  at once, so one client cannot take every file descriptor and starve the others.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
from dataclasses import dataclass
from functools import cache
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from worker.infra.settings import Settings, get_settings

# Real headers are a few hundred bytes; nginx's default allows 32 KiB.
MAX_HEADER_BYTES = 64 * 1024
# File descriptors kept for what is not a client: Redis connections, logs, the loop.
RESERVED_FDS = 64


@dataclass(frozen=True, slots=True)
class Limits:
    read_timeout: float
    max_connections: int
    per_address: int
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = soft - RESERVED_FDS if soft != resource.RLIM_INFINITY else soft
        return cls(
            read_timeout=settings.ingress_read_timeout,
            max_connections=max(1, min(settings.ingress_max_connections, fds)),
            per_address=settings.ingress_max_connections_per_address,
            exempt=tuple(
                ipaddress.ip_network(cidr, strict=False)
                for cidr in settings.ingress_trusted_proxies
            ),
        )

    def exempts(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self.exempt)


@cache
def _limits() -> Limits:
    return Limits.of(get_settings())


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """What `prefsync serve` runs each connection with (uvicorn's ``http`` option)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits or _limits()
        self.deadline: asyncio.TimerHandle | None = None
        # Whether a request's headers are awaited, their bytes so far, and how many
        # requests' headers were read.
        self.in_headers = True
        self.header_bytes = 0
        self.headers_read = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._over_limits():
            transport.close()
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        idle = self.cycle is None or self.cycle.response_complete
        if idle and self.deadline is None:
            self._arm()  # bytes between requests: the next request's headers are due
        counting, before = self.in_headers, self.headers_read
        super().data_received(data)
        # Counted only when the chunk holds header bytes of one request and nothing else;
        # a header that keeps growing is cut after MAX_HEADER_BYTES and a chunk or two.
        if counting and self.in_headers and self.headers_read == before:
            self.header_bytes += len(data)
            if self.header_bytes > MAX_HEADER_BYTES and not self.transport.is_closing():
                self._refuse(431, "Request headers too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_headers = True
        self.header_bytes = 0
        if self.deadline is None:
            self._arm()

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.headers_read += 1
        self._arm()  # the body is due within as long again
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _over_limits(self) -> bool:
        if len(self.connections) > self.limits.max_connections:
            return True
        host = self.client[0] if self.client else ""
        if not host or self.limits.exempts(host):
            return False
        same = sum(1 for other in self.connections if other.client and other.client[0] == host)
        return same > self.limits.per_address

    def _arm(self) -> None:
        self._disarm()
        self.deadline = self.loop.call_later(self.limits.read_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def _too_slow(self) -> None:
        self.deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode("ascii")
        self.transport.write(
            STATUS_LINE[status]
            + b"content-type: text/plain; charset=utf-8\r\n"
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
            + body
        )
        self.transport.close()
