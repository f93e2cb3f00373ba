"""``POST /signals/{connector_id}``: what Braze and Brevo tell prefsync a person refused
there (docs/two-way-consent.md).

The caller authenticates as on ``/webhooks`` (Basic or a Bearer token) and the tenant
comes from the credential. The refusals of the body are stored in Redis's inbox
(worker.records.signals), each once, before the ``202``.

Never a 5xx: Brevo drops a webhook answered with a 5xx (or a 4xx other than 429) and
never sends it again, so whatever keeps the signal from being stored — Redis down, a
credential that cannot be checked, a bug — is a ``429`` with ``Retry-After``, which every
tool retries.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from worker.core.signals import InvalidSignal, read_signals
from worker.delivery.runtime import runtime
from worker.records.signals import SignalInbox


class Refusal(Protocol):
    """worker.ingress.app's ``Refused``: an answer other than 2xx (given to the route, as
    app.py imports this module)."""

    status: int
    error: str

    def response(self) -> Response: ...


class IngressSteps(Protocol):
    """The steps of worker.ingress.app's ``Ingress`` this route shares with /webhooks."""

    metrics: Any

    def check_source(self, request: Request) -> None: ...

    async def authenticate(self, request: Request) -> Any: ...

    async def redis_call(self, call: Any, *args: Any) -> Any: ...

    async def read_body(self, request: Request) -> bytes: ...


log = structlog.get_logger("prefsync.ingress")

#: seconds a tool is asked to wait when the signal could not be stored
RETRY_AFTER = "5"


class SignalsRoute:
    """The route's handler. ``refused`` is the error class the ingress's steps raise for
    an answer other than 2xx (built as ``refused(status, error, headers)``),
    ``unavailable`` the errors of a Redis or broker that cannot take a write."""

    def __init__(
        self,
        ingress: IngressSteps,
        refused: type[Exception],
        unavailable: tuple[type[Exception], ...],
    ) -> None:
        self.ingress = ingress
        self.refused = refused
        self.unavailable = unavailable
        self.inbox = SignalInbox(runtime().redis)

    async def handle(self, request: Request) -> Response:
        try:
            answer = await self._handle(request)
        except self.refused as exc:
            refusal: Refusal = exc  # type: ignore[assignment]
            if refusal.status == 503:  # Redis down, shedding load: retry, never drop
                return self._later(refusal.error)
            self.ingress.metrics.signal(refusal.status)
            return refusal.response()
        except self.unavailable as exc:
            log.warning("signal not stored: Redis cannot take it", error=str(exc))
            return self._later("the signal could not be stored; send it again later")
        except Exception:
            log.exception("signal not stored: unexpected error")
            return self._later("the signal could not be stored; send it again later")
        return answer

    async def _handle(self, request: Request) -> Response:
        Refused = self.refused
        ingress = self.ingress
        ingress.check_source(request)
        client = await ingress.authenticate(request)
        connector_id = request.path_params["connector_id"]
        route = await ingress.redis_call(self.inbox.route, client.tenant, connector_id)
        if route is None:
            raise Refused(404, f"the tenant has no connector {connector_id!r}")
        if not route.bidirectional:
            raise Refused(
                403,
                f"connector {connector_id!r} does not take signals: bidirectional is off "
                "in its config",
            )
        body = await ingress.read_body(request)
        received_at = datetime.now(UTC)
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise Refused(400, "body: not valid JSON") from None
        try:
            parsed = read_signals(route.type_id, connector_id, document, received_at)
        except InvalidSignal as exc:
            raise Refused(400, str(exc)) from None
        stored = await run_in_threadpool(
            self.inbox.store, client.tenant, parsed.signals, received_at
        )
        duplicates = len(parsed.signals) - stored
        ingress.metrics.signal(202, stored, duplicates, parsed.ignored)
        return JSONResponse(
            {"stored": stored, "duplicates": duplicates, "ignored": parsed.ignored}, 202
        )

    def _later(self, error: str) -> Response:
        self.ingress.metrics.signal(429)
        return JSONResponse({"error": error}, 429, headers={"Retry-After": RETRY_AFTER})
