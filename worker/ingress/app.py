"""The HTTP front door the PMP calls (docs/ingress-api.md).

Starlette on uvicorn (uvloop + httptools): an event loop holds thousands of keep-alive
connections in one process, the C parsers keep HTTP off the Python hot path, and the
blocking work (Redis) runs off the loop — the enqueueing in one thread that batches
concurrent requests (worker.ingress.batching), credential checks that miss the cache in
the thread pool. Stateless: every process holds a Redis connection pool and caches, nothing
that another process needs.

A 2xx means the event is in Redis (the outbox and the queue): only then does the PMP stop
retrying. Anything else is refused with the status of docs/ingress-api.md's contract table.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ipaddress
import json
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote_plus

import redis
import structlog
from kombu.exceptions import OperationalError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from worker.core.errors import EventTooLarge, InvalidEvent
from worker.core.payloads import read_payloads
from worker.delivery.runtime import runtime
from worker.infra.settings import Settings
from worker.ingress.batching import BatchingEnqueuer
from worker.ingress.credentials import CheckCache, Client, CredentialStore
from worker.ingress.metrics import IngressMetrics
from worker.ingress.ratelimit import TokenRateLimit
from worker.ingress.signals import SignalsRoute
from worker.producer import enqueue_validated, validate

log = structlog.get_logger("prefsync.ingress")
T = TypeVar("T")

# What a PMP is told to wait before it tries again when Redis cannot take the event.
RETRY_AFTER = "5"
BROKER_DOWN = (redis.exceptions.RedisError, OperationalError)
SWITCH_INTERVAL = 0.0005
UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="prefsync"'}
# A token request is a few fields of a few dozen bytes: anything bigger is not one, and is
# refused before it is read whole or parsed on the event loop.
TOKEN_REQUEST_BYTES = 8192
TOKEN_REQUEST_FIELDS = 16


class Refused(Exception):
    """An answer other than 2xx, with its status and a one-line reason."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error}, self.status, headers=self.headers)


class Ingress:
    """The state one ingress process holds, and its request handlers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        token_key = settings.ingress_token_key
        self.credentials = CredentialStore(
            runtime().redis,
            settings.ingress_token_ttl,
            token_key.get_secret_value().encode() if token_key else b"",
        )
        self.cache = CheckCache(settings.ingress_auth_cache)
        self.token_rate = TokenRateLimit(runtime().redis, settings.ingress_token_rate)
        self.allow_from = _networks(settings.ingress_allow_from)
        self.trusted_proxies = _networks(settings.ingress_trusted_proxies)
        self.metrics = IngressMetrics(settings)
        self.enqueuer: BatchingEnqueuer | None = None

    # -- the routes ------------------------------------------------------------------------

    async def webhooks(self, request: Request) -> Response:
        try:
            self.check_source(request)
            client = await self.authenticate(request)
            if _media_type(request) != "application/json":
                raise Refused(415, "the body must be JSON (Content-Type: application/json)")
            body = await self.read_body(request)
            payloads, keys = self.events_of(body, client)
            assert self.enqueuer is not None
            try:
                task_ids = await self.enqueuer.enqueue(payloads)
            except BROKER_DOWN as exc:
                log.warning("webhook not stored: Redis cannot take it", error=str(exc))
                raise Refused(
                    503,
                    "the event could not be stored; send it again later (should a copy have "
                    "got through, it is skipped as a duplicate)",
                    {"Retry-After": RETRY_AFTER},
                ) from None
        except Refused as refused:
            self.metrics.webhook(refused.status, 0)
            return refused.response()
        self.metrics.webhook(202, len(payloads))
        events = [
            {"event_key": key, "task_id": task_id}
            for key, task_id in zip(keys, task_ids, strict=True)
        ]
        return JSONResponse({"accepted": len(events), "events": events}, 202)

    async def token(self, request: Request) -> Response:
        """RFC 6749 §4.4: client credentials in Basic auth, checked before any of the body
        is read, or in the form body, read up to a small cap."""
        try:
            self.check_source(request)
            basic = _basic(request.headers.get("authorization", ""))
            client = await self.token_client(*basic, challenge=True) if basic else None
            body = await self.read_body(request, TOKEN_REQUEST_BYTES)
            form = _form(body, _media_type(request))
            if client is None:
                client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
                client = await self.token_client(client_id, secret, challenge=False)
            if form.get("grant_type") != "client_credentials":
                raise Refused(400, "unsupported_grant_type")
            wait = await self.redis_call(self.token_rate.wait, client.client_id)
            if wait:
                raise Refused(429, "slow_down", {"Retry-After": str(wait)})
            token = await self.redis_call(self.credentials.issue_token, client)
        except Refused as refused:
            self.metrics.token(refused.status)
            return refused.response()
        self.metrics.token(200)
        return JSONResponse(
            {
                "access_token": token,
                "token_type": "Bearer",
                "expires_in": self.settings.ingress_token_ttl,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    async def token_client(self, client_id: str, secret: str, challenge: bool) -> Client:
        """The client of a token request; Refused (401) when the secret is wrong. Redis
        down is a 503 here too: try again later, the secret may well be right."""
        client = await self.check(f"basic {client_id}:{secret}", self._by_secret, client_id, secret)
        if client is None:  # RFC 6749 §5.2: the error codes are the messages
            headers = {"WWW-Authenticate": 'Basic realm="prefsync"'} if challenge else {}
            raise Refused(401, "invalid_client", headers)
        return client

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        try:
            await run_in_threadpool(runtime().redis.ping)
        except redis.exceptions.RedisError:
            return JSONResponse({"status": "Redis does not answer"}, 503)
        return JSONResponse({"status": "ok"})

    async def metrics_text(self, request: Request) -> Response:
        body, content_type = await run_in_threadpool(self.metrics.exposition)
        return Response(body, headers={"Content-Type": content_type})

    # -- the steps of a webhook ------------------------------------------------------------

    def check_source(self, request: Request) -> None:
        if not self.allow_from:
            return
        address = self.client_address(request)
        if address is None or not any(address in network for network in self.allow_from):
            raise Refused(403, "calls from this address are not allowed")

    def client_address(
        self, request: Request
    ) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The caller's address: the peer's, or, when the peer is a trusted proxy, the last
        address in X-Forwarded-For that is not a trusted proxy itself (the ones before it
        were written by the caller and prove nothing)."""
        peer = _address(request.client.host if request.client else "")
        if peer is None or not self._trusted(peer):
            return peer
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        hops = [_address(hop.strip()) for hop in forwarded.split(",") if hop.strip()]
        for hop in reversed(hops):
            if hop is None:
                return None
            if not self._trusted(hop):
                return hop
        return peer

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(address in network for network in self.trusted_proxies)

    async def authenticate(self, request: Request) -> Client:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        client = None
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
            client = await self.check(f"bearer {token}", self.credentials.check_token, token)
        elif (basic := _basic(header)) is not None:
            client = await self.check(f"basic {basic[0]}:{basic[1]}", self._by_secret, *basic)
        if client is None:
            raise Refused(401, "missing or invalid credentials", UNAUTHORIZED_HEADERS)
        return client

    def _by_secret(self, client_id: str, secret: str) -> Client | None:
        if not client_id or not secret:
            return None
        return self.credentials.check_secret(client_id, secret)

    async def check(
        self, presented: str, lookup: Callable[..., Client | None], *args: str
    ) -> Client | None:
        """The client ``presented`` identifies: from the cache, else ``lookup(*args)`` in
        the thread pool (Redis). Refused (503) when Redis cannot be asked."""
        found, client = self.cache.get(presented)
        if not found:
            client = await self.redis_call(lookup, *args)
            self.cache.put(presented, client)
        return client

    async def redis_call(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` (Redis reads or writes) in the thread pool; Refused (503) when
        Redis does not answer."""
        try:
            return await run_in_threadpool(call, *args)
        except BROKER_DOWN as exc:
            log.warning("credentials not checked: Redis does not answer", error=str(exc))
            retry = {"Retry-After": RETRY_AFTER}
            raise Refused(503, "credentials cannot be checked now", retry) from None

    async def read_body(self, request: Request, cap: int | None = None) -> bytes:
        cap = cap or self.settings.ingress_max_request_bytes
        too_large = Refused(413, f"the request is larger than the limit of {cap} bytes")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    def events_of(self, body: bytes, client: Client) -> tuple[list[Any], list[str]]:
        """The payloads of ``body`` and their event keys, each validated as ``prefsync
        enqueue`` validates it, with its message; all of them, or a refusal."""
        payloads, keys = [], []
        for label, payload, error in read_payloads(body):
            if error is not None:
                raise Refused(400, f"{label}: {error}")
            try:
                event = validate(payload)
            except EventTooLarge as exc:
                raise Refused(413, f"{label}: {exc}") from None
            except InvalidEvent as exc:
                raise Refused(400, f"{label}: {exc}") from None
            if event.tenant != client.tenant:
                # The tenant comes from the credential: a payload cannot choose another.
                raise Refused(403, f"{label}: the event's tenant is not the credential's")
            payloads.append(payload)
            keys.append(event.event_key)
        return payloads, keys

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.enqueuer = BatchingEnqueuer(enqueue_validated)
        try:
            yield
        finally:
            self.enqueuer.close()


def create_app(settings: Settings | None = None) -> Starlette:
    from worker.infra.settings import get_settings

    # The enqueueing thread blocks on Redis several times a round; each time Redis answers
    # it must win the GIL back from the busy event loop, which by default holds it up to
    # 5 ms. With 0.5 ms, rounds are short and the loop loses little.
    sys.setswitchinterval(SWITCH_INTERVAL)

    ingress = Ingress(settings or get_settings())
    routes = [
        Route("/webhooks", ingress.webhooks, methods=["POST"]),
        Route("/oauth/token", ingress.token, methods=["POST"]),
        Route(
            "/signals/{connector_id}",
            SignalsRoute(ingress, Refused, BROKER_DOWN).handle,
            methods=["POST"],
        ),
        Route("/healthz", ingress.healthz, methods=["GET"]),
        Route("/readyz", ingress.readyz, methods=["GET"]),
        Route("/metrics", ingress.metrics_text, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=ingress.lifespan)


def serve_app() -> Starlette:
    """What `prefsync serve` runs in each of its processes (uvicorn's factory): with
    ``--workers N`` they are new processes, which set up our log pipeline themselves."""
    from worker.infra.logging import configure
    from worker.infra.settings import get_settings

    configure(get_settings())
    return create_app()


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _basic(header: str) -> tuple[str, str] | None:
    """(client id, secret) of ``Authorization: Basic ...``; None for anything else. Both
    are form-urlencoded first, as RFC 6749 §2.3.1 asks of a client."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        return None
    return unquote_plus(client_id), unquote_plus(secret)


def _form(body: bytes, media_type: str) -> dict[str, str]:
    """The token request's parameters: a form (RFC 6749), or a JSON object from a client
    that sends one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    if media_type == "application/json":
        try:
            document = json.loads(text)
        except ValueError:
            return {}
        if not isinstance(document, dict):
            return {}
        return {k: v for k, v in document.items() if isinstance(v, str)}
    try:
        fields = parse_qs(text, max_num_fields=TOKEN_REQUEST_FIELDS)
    except ValueError:
        raise Refused(400, "invalid_request") from None
    return {k: v[0] for k, v in fields.items()}


def _networks(cidrs: tuple[str, ...]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(cidr, strict=False) for cidr in cidrs]


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
