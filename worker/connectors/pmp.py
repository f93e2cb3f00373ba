"""The PMP's API (Didomi), per tenant: its credentials and a client that writes consent
events and reads users (docs/two-way-consent.md).

Like a destination connector, this module knows nothing of Celery or Redis: it is given
a ``BaseTransport`` (worker.connectors.base) and turns the PMP's answers into results or
into the errors that say retry (``RetryableError``), give up (``PermanentError``) or wait
(``Deferred``), on the same rules as the destinations: 408, 425, 429, 5xx and no answer
are transient, any other 4xx is not.

A token (``POST {api_url}/sessions``) lasts about an hour. The client keeps one per tenant
and credentials, and gets a new one when the PMP answers 401; a second 401 in a row means
the key or secret is wrong. The PMP allows 100 ``/sessions`` calls per 15 s per
organization: the client never makes more than that in a process, and defers the call
(``Deferred``) rather than be refused.
"""

from __future__ import annotations

import hashlib
import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import ErrorDetails

from worker.connectors.base import (
    BaseTransport,
    HttpRequest,
    HttpResponse,
    answer_reason,
    header_number,
)
from worker.core.errors import Deferred, InvalidConfig, PermanentError, RetryableError
from worker.core.masking import mask
from worker.core.validation import describe

DEFAULT_API_URL = "https://api.didomi.io/v1"
#: who prefsync says changed a person's consent on their behalf (``delegate.id``)
DELEGATE = "prefsync"
#: ``/sessions``: 100 requests per 15 s per organization
SESSIONS_LIMIT, SESSIONS_WINDOW = 100, 15.0
#: events per ``POST /consents/events`` body
EVENTS_PER_CALL = 100
_HOSTNAMES_REFUSED = frozenset({"localhost", "localhost.localdomain"})


def api_url(url: str, allow_hosts: Collection[str] = ()) -> str:
    """``url`` as the PMP API's base URL (no trailing ``/``), or ValueError.

    The API key is sent there, so the rules are a connector server's: ``https://`` with a
    host name (not an IP address, not ``localhost``), no user info, port, query or
    fragment; ``http(s)://host:port`` is also accepted when ``host:port`` is in
    ``allow_hosts`` (PREFSYNC_ALLOW_HOSTS: local stacks and tests).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError("must be an https:// URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain user info (a name@ before the host)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    path = parts.path.rstrip("/")
    if port is not None and f"{host}:{port}" in allow_hosts:
        return f"{scheme}://{host}:{port}{path}"
    if scheme != "https":
        raise ValueError("must use https://")
    if port is not None:
        raise ValueError("must not name a port (allow host:port with PREFSYNC_ALLOW_HOSTS)")
    if not host or host.endswith(".") or host in _HOSTNAMES_REFUSED:
        raise ValueError("must name the PMP API's host")
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return f"https://{host}{path}"
    raise ValueError("must name a host, not an IP address")


class PmpCredentials(BaseModel):
    """A tenant's PMP API credentials. Build them with ``parse_credentials``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    type_id: Literal["didomi"] = "didomi"
    #: the tenant's id in the PMP: the ``organization_id`` of its webhook events
    organization_id: str = Field(min_length=1, max_length=200)
    api_key: SecretStr
    api_secret: SecretStr
    api_url: str = DEFAULT_API_URL
    regulation: str = Field("gdpr", min_length=1, max_length=64)

    @field_validator("api_key", "api_secret")
    @classmethod
    def _single_token(cls, secret: SecretStr) -> SecretStr:
        text = secret.get_secret_value().strip()
        if not text:
            raise ValueError("must not be empty")
        if any(char.isspace() or not char.isprintable() for char in text):
            raise ValueError("must be a single token, without spaces or line breaks")
        return SecretStr(text)

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, url: str, info: ValidationInfo) -> str:
        return api_url(url, (info.context or {}).get("allow_hosts", ()))

    @field_validator("regulation")
    @classmethod
    def _lower(cls, regulation: str) -> str:
        return regulation.lower()

    @property
    def fingerprint(self) -> str:
        """Names these credentials without revealing them: a token is kept per
        fingerprint, so stored new credentials get a token of their own."""
        material = "\n".join(
            (self.api_url, self.api_key.get_secret_value(), self.api_secret.get_secret_value())
        )
        return hashlib.sha256(material.encode()).hexdigest()[:16]

    def to_stored(self) -> dict[str, Any]:
        """As JSON for the store, secrets in clear: for sealing only."""
        return self._export(SecretStr.get_secret_value)

    def describe(self) -> dict[str, Any]:
        """As an operator may see them: secrets show their last 4 characters only."""
        return self._export(lambda secret: mask(secret.get_secret_value()))

    def _export(self, show: Callable[[SecretStr], str]) -> dict[str, Any]:
        return {
            "type_id": self.type_id,
            "organization_id": self.organization_id,
            "api_key": show(self.api_key),
            "api_secret": show(self.api_secret),
            "api_url": self.api_url,
            "regulation": self.regulation,
        }


def parse_credentials(
    raw: object, *, tenant: str, allow_hosts: Collection[str] = ()
) -> PmpCredentials:
    """Validate ``raw`` as ``tenant``'s PMP credentials: ``InvalidConfig`` with one line per
    problem, none quoting a value (it may be a secret). ``organization_id`` defaults to the
    tenant and must be it: the PMP's webhooks name the tenant by it, and credentials of
    another organization would write this tenant's people into it."""
    if not isinstance(raw, dict):
        raise InvalidConfig(f"PMP credentials: must be a JSON object, not {type(raw).__name__}")
    data = {"organization_id": tenant, **raw}
    try:
        credentials = PmpCredentials.model_validate(data, context={"allow_hosts": allow_hosts})
    except ValidationError as exc:
        lines = describe(exc, lambda loc: ".".join(map(str, loc)) or "credentials", _message)
        raise InvalidConfig("\n".join(lines)) from None
    if credentials.organization_id != tenant:
        raise InvalidConfig(
            f"organization_id: must be the tenant's id ({tenant!r}), the organization_id "
            "its PMP webhooks carry"
        )
    return credentials


def _message(error: ErrorDetails) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "literal_error":
        return "must be 'didomi'"
    return message.removeprefix("Value error, ")


class Purpose(BaseModel):
    """One purpose of a consent event: ``enabled``, and preference values as whole strings
    (``{PREF: {"value": "v1,v3"}}``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    enabled: bool | None = None
    values: dict[str, dict[str, str]] | None = None


class ConsentEvent(BaseModel):
    """A consent event prefsync writes on a person's behalf: a partial update of their
    status, dated when the tool told us, naming prefsync as the delegate. ``id`` is
    deterministic so that a retry cannot create it twice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1, max_length=200)
    created_at: datetime
    user_id: str = Field(min_length=1)
    regulation: str
    purposes: tuple[Purpose, ...] = Field(min_length=1)
    #: what ``delegate.metadata`` says: the connector the signal came from, its kind
    metadata: Mapping[str, str] = Field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        created = self.created_at.astimezone(UTC).isoformat(timespec="milliseconds")
        return {
            "id": self.id,
            "created_at": created.replace("+00:00", "Z"),
            "user": {"organization_user_id": self.user_id},
            "regulation": self.regulation,
            "consents": {
                "purposes": [purpose.model_dump(exclude_none=True) for purpose in self.purposes],
                "vendors": {},
            },
            "delegate": {"id": DELEGATE, "name": DELEGATE, "metadata": dict(self.metadata)},
        }


@dataclass(frozen=True, slots=True)
class UsersPage:
    """One page of ``GET /consents/users``: the users as the PMP gives them, and the cursor
    of the next page (None on the last)."""

    users: list[dict[str, Any]]
    cursor: str | None


class SessionWindow:
    """At most ``limit`` ``/sessions`` calls per ``window`` seconds per organization, in
    this process: one more is deferred until a slot frees."""

    def __init__(
        self,
        limit: int = SESSIONS_LIMIT,
        window: float = SESSIONS_WINDOW,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.now = now
        self._calls: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, organization: str) -> None:
        with self._lock:
            now = self.now()
            calls = self._calls.setdefault(organization, deque())
            while calls and calls[0] <= now - self.window:
                calls.popleft()
            if len(calls) >= self.limit:
                raise Deferred(
                    "the PMP's /sessions limit is reached for this organization",
                    wait=calls[0] + self.window - now,
                )
            calls.append(now)


class PmpClient:
    """Calls the PMP API with a tenant's credentials; safe to share between threads."""

    def __init__(self, transport: BaseTransport, sessions: SessionWindow | None = None) -> None:
        self.transport = transport
        self.sessions = sessions or SessionWindow()
        #: (organization, credentials' fingerprint) -> access token
        self._tokens: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def write_events(self, credentials: PmpCredentials, events: list[ConsentEvent]) -> int:
        """Create ``events`` (at most ``EVENTS_PER_CALL``) in one call; the HTTP status.
        An event the PMP already holds (its id was written before: a retry) is success."""
        if not 1 <= len(events) <= EVENTS_PER_CALL:
            raise ValueError(f"1 to {EVENTS_PER_CALL} events per call, not {len(events)}")
        query = urlencode({"organization_id": credentials.organization_id})
        body: Any = events[0].body() if len(events) == 1 else [e.body() for e in events]
        response = self._call(credentials, "POST", f"/consents/events?{query}", body)
        if 200 <= response.status < 300 or response.status == 409:
            return response.status
        raise _refusal("the consent event", response, credentials)

    def users_page(
        self,
        credentials: PmpCredentials,
        *,
        user_id: str | None = None,
        cursor: str | None = None,
    ) -> UsersPage:
        """One page of the organization's users of its regulation (one user when
        ``user_id`` is given)."""
        params = {
            "organization_id": credentials.organization_id,
            "regulation": credentials.regulation,
        }
        if user_id is not None:
            params["organization_user_id"] = user_id
        if cursor is not None:
            params["$cursor"] = cursor
        response = self._call(credentials, "GET", f"/consents/users?{urlencode(params)}")
        if response.status != 200:
            raise _refusal("reading users", response, credentials)
        body = response.body
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise RetryableError("the PMP's users page has no data list", status=200)
        next_cursor = body.get("cursor")
        return UsersPage(
            [user for user in body["data"] if isinstance(user, dict)],
            next_cursor if isinstance(next_cursor, str) and next_cursor else None,
        )

    def users(self, credentials: PmpCredentials) -> Iterator[dict[str, Any]]:
        """Every user of the organization's regulation, page after page."""
        cursor = None
        while True:
            page = self.users_page(credentials, cursor=cursor)
            yield from page.users
            if page.cursor is None:
                return
            cursor = page.cursor

    def user(self, credentials: PmpCredentials, user_id: str) -> dict[str, Any] | None:
        """The PMP's record of one person, or None when it has none."""
        page = self.users_page(credentials, user_id=user_id)
        return next((u for u in page.users if u.get("organization_user_id") == user_id), None)

    def _call(
        self, credentials: PmpCredentials, method: str, path: str, body: Any = None
    ) -> HttpResponse:
        """Send with the tenant's token; on a 401, once more with a new one."""
        for fresh in (False, True):
            token = self._token(credentials, fresh=fresh)
            request = HttpRequest(
                method,
                credentials.api_url + path,
                {"Authorization": f"Bearer {token}", "Accept": "application/json"},
                body,
            )
            response = self.transport.send(request)
            if response.status != 401:
                return response
        raise PermanentError(
            f"the PMP refused a new token (HTTP 401): {_reason(response.body, credentials)}; "
            f"check the credentials (`prefsync pmp put {credentials.organization_id} FILE`)",
            status=401,
            operator_action=True,
        )

    def _token(self, credentials: PmpCredentials, *, fresh: bool) -> str:
        key = (credentials.organization_id, credentials.fingerprint)
        with self._lock:
            if fresh:
                self._tokens.pop(key, None)
            elif (token := self._tokens.get(key)) is not None:
                return token
        token = self._session(credentials)
        with self._lock:
            self._tokens[key] = token
        return token

    def _session(self, credentials: PmpCredentials) -> str:
        self.sessions.take(credentials.organization_id)
        request = HttpRequest(
            "POST",
            f"{credentials.api_url}/sessions",
            {"Accept": "application/json"},
            {
                "type": "api-key",
                "key": credentials.api_key.get_secret_value(),
                "secret": credentials.api_secret.get_secret_value(),
            },
        )
        response = self.transport.send(request)
        body = response.body
        if 200 <= response.status < 300:
            token = body.get("access_token") if isinstance(body, dict) else None
            if isinstance(token, str) and token:
                return token
            raise RetryableError("the PMP's session answer has no access_token", status=200)
        if response.status in (401, 403):
            raise PermanentError(
                f"the PMP refused the API key and secret (HTTP {response.status}): "
                f"{_reason(body, credentials)}",
                status=response.status,
                operator_action=True,
            )
        raise _refusal("a token", response, credentials)


def _refusal(what: str, response: HttpResponse, credentials: PmpCredentials) -> Exception:
    """The error a non-success answer means: transient (408, 425, 429, 5xx, a redirect
    is not) or permanent."""
    status = response.status
    reason = _reason(response.body, credentials)
    if status == 429:
        wait = header_number(response.headers, "retry-after")
        return RetryableError(
            f"the PMP's rate limit was reached for {what} (HTTP 429): {reason}",
            status=status,
            retry_after=None if wait is None else max(wait, 0.0),
        )
    if status in (408, 425) or status >= 500:
        return RetryableError(
            f"the PMP is unavailable for {what} (HTTP {status}): {reason}", status=status
        )
    if 200 <= status < 300:
        return RetryableError(
            f"the PMP answered {what} with HTTP {status}: {reason}", status=status
        )
    return PermanentError(
        f"the PMP refused {what} (HTTP {status}): {reason}",
        status=status,
        operator_action=status in (403, 404) or 300 <= status < 400,
    )


def _reason(body: Any, credentials: PmpCredentials) -> str:
    """The PMP's ``name`` and ``message``, short, its secrets masked should it echo them."""
    secrets = [s.get_secret_value() for s in (credentials.api_key, credentials.api_secret)]
    return answer_reason(body, secrets, _pmp_message)


def _pmp_message(body: dict[str, Any]) -> str:
    return f"{body.get('name') or body.get('code') or 'error'}: {body['message']}"
