"""How Braze, Brevo (Sendinblue) and the PMP (Didomi) answer, and what the fake destinations
keep of each call.

No I/O here: tests/fakes/destinations.py serves it on a threaded HTTP server with a control
API (tests, the demo, docker-compose) and bench/fake.py on a fast asyncio one (the
benchmark). Both hand every request to :meth:`FakeVendors.handle` and send back the
:class:`Answer` it returns, so tests, demo and benchmark meet the same Braze and Brevo.
The path decides the service: ``/v3/...`` is Brevo, ``/pmp/...`` the PMP, anything else
Braze.

Braze::

    POST /users/track    201 {"message": "success", "attributes_processed": N}, with an
                         "errors" list naming objects without a user id; 401 without a
                         bearer key, 400 without an attributes list, 400 as a whole when it
                         holds a user named by refuse_braze_user (as for a malformed object)
    POST /users/delete   201 {"deleted": n, "message": "success"} for one list of at most 50
                         external_ids; the fake counts every id as queued and remembers it
                         (braze_deleted), forgetting the profile
    POST /users/export/ids         {"users": [{"external_id", "email_subscribe",
                                   "push_subscribe", "custom_attributes"}], "invalid_user_ids"}
                                   for at most 50 external_ids: the profiles /users/track
                                   was told (a user never told is invalid)
    GET  /subscription/status/get  {"status": {"<id>": "Subscribed"|"Unsubscribed"|
                                   "Unknown"}} for ``subscription_group_id`` and at most 50
                                   ``external_id[]``

Brevo (``api-key`` header, else 401)::

    PUT    /v3/contacts/{id}   204; 404 document_not_found for an unknown contact; 400
                               invalid_parameter for one given to refuse_brevo_contact
    GET    /v3/contacts/{id}   200 {"id", "email", "emailBlacklisted", "smsBlacklisted",
                               "attributes"} for a contact added, created or updated
                               (``attributes.EXT_ID`` when added with one); else 404
    POST   /v3/contacts        201 {"id": N}; a known contact: 204 with updateEnabled, else
                               400 duplicate_parameter
    POST   /v3/contacts/batch  204: every contact updated. All or nothing, as Brevo answers:
                               404 {"code": "document_not_found", "message": "No contact
                               found for indexes 3,4"} (zero-based) when it names contacts
                               it does not know; 400 invalid_parameter when an item names
                               no contact or more than one (email, id, sms), or names one
                               given to refuse_brevo_contact; nothing is updated then
    DELETE /v3/contacts/{id}   204 for a known contact, which is then unknown until created
                               again; 404 document_not_found for an unknown one

    GET    /v3/webhooks        {"webhooks": [...]}, those of ``?type=`` when given
    POST   /v3/webhooks        201 {"id": N} for {"url", "events", "type", "description"}

The PMP (Didomi), under ``/pmp`` (its API URL is ``{fake}/pmp/v1``)::

    POST /pmp/v1/sessions          201 {"access_token"} for {"type": "api-key", "key",
                                   "secret"}; 429 with Retry-After past 100 calls in 15 s
    POST /pmp/v1/consents/events   201 for one event or an array of up to 100 (a bearer
                                   token it issued, else 401; 409 for an id it holds); each
                                   event is merged into its user's status
    GET  /pmp/v1/consents/users    {"data", "limit", "cursor"}: pages of ``pmp_page_size``
                                   users, ``organization_user_id`` for one, ``$cursor`` next

:meth:`FakeVendors.expire_pmp_tokens` makes every token issued so far answer 401.

Told state: with ``keep_calls``, the fake keeps what it was told of each Braze profile
(``email_subscribe``, ``push_subscribe``, custom attributes, subscription groups; a new
profile starts ``subscribed``) and each Brevo contact (its blocklist flags and attributes),
and answers the reads above from it. :meth:`FakeVendors.edit_braze_profile` and
:meth:`FakeVendors.edit_brevo_contact` change it behind prefsync's back (drift).

Every contact is known unless ``strict_contacts``: then only those added with
:meth:`FakeVendors.add_brevo_contact` or created by ``POST /v3/contacts``. An email address
at ``NEVER_KNOWN_DOMAIN`` is unknown either way until created (the benchmark's unknown
contacts). Any other route answers 404.

Rate limits, as the services count them: fixed windows aligned to the clock, Braze's
3,000 calls per 3 s for the workspace, Brevo's 10 calls per second per account (its
``api-key``). Every answer carries the window's headers (Braze: ``X-RateLimit-*``, reset in
epoch seconds; Brevo: ``x-sib-ratelimit-*``, reset in seconds from now). A Brevo call over
the limit is answered 429 ``too_many_requests``; Braze's limit is reported, not enforced:
the highest count in a window is in the stats, so a result a real workspace would have
throttled shows.

Scripted answers (``fail_next``, ``outage``, ``throttle``) replace the normal one, before any
check of credentials or body. Status 0 means: close the connection without answering (a
network error). A delayed answer (``set_delay``) has already taken effect when the delay
starts, as when a real service processes a request whose client then times out.

Records: counters per service (:meth:`FakeVendors.stats`), and with ``keep_calls`` every
call with its headers and body (:meth:`FakeVendors.calls`). An object a call delivers -- a
Braze attributes object, a Brevo contact's ``attributes`` -- may carry ``bench_enqueued_at``
/ ``BENCH_ENQUEUED_AT``, the epoch seconds at which the benchmark enqueued the event; the
stats keep ``receive time - enqueued time`` for each.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

SERVICES = ("braze", "brevo", "pmp")

BRAZE_LIMIT, BRAZE_WINDOW = 3000, 3.0  # /users/track: 3,000 requests per 3 s
BREVO_LIMIT, BREVO_WINDOW = 10, 1.0  # /v3/contacts/*: 10 requests per second, every plan
PMP_SESSIONS_LIMIT, PMP_SESSIONS_WINDOW = 100, 15.0  # /sessions per organization
PMP_PREFIX = "/pmp/v1"

BRAZE_STAMP = "bench_enqueued_at"
BREVO_STAMP = BRAZE_STAMP.upper()  # Brevo attribute names are upper case (the worker does it)

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
UNKNOWN_CONTACT = {"code": "document_not_found", "message": "Contact does not exist"}
NEVER_KNOWN_DOMAIN = "unknown.invalid"
BATCH_IDENTIFIERS = ("email", "id", "sms")  # what names the contact of a batch item
BREVO_FLAGS = ("emailBlacklisted", "smsBlacklisted")
BRAZE_GROUP = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
BRAZE_READ_BATCH = 50  # external ids per export or subscription status call


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
    answer_body: Any = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Answer:
    status: int  # 0: close the connection without answering
    body: Any = None  # JSON; None: an empty body
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class ServiceStats:
    """What one service received since the last reset."""

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
    latencies: list[float] = field(default_factory=list)  # seconds, stamped objects only

    def count(self, status: int, calls_in_window: int, now: float) -> None:
        self.calls += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.first_at = self.first_at or now
        self.last_at = now
        self.peak_calls_per_window = max(self.peak_calls_per_window, calls_in_window)
        if 200 <= status < 300:
            self.accepted_calls += 1
            self.last_accepted_at = now
        elif status == 429:
            self.rate_limited += 1

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
    """Calls per account in fixed clock-aligned windows: how many so far in the current one."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._current: dict[str, tuple[int, int]] = {}  # account -> (window number, calls)

    def count(self, account: str, now: float) -> tuple[int, float]:
        """Count one call; return the calls in its window so far and the window's end."""
        number = math.floor(now / self.window)
        seen, calls = self._current.get(account, (number, 0))
        calls = calls + 1 if seen == number else 1
        self._current[account] = (number, calls)
        return calls, (number + 1) * self.window


def service_for(path: str) -> str:
    if path == "/v3" or path.startswith("/v3/"):
        return "brevo"
    return "pmp" if path.startswith("/pmp/") else "braze"


def check_service(service: str) -> str:
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {SERVICES}")
    return service


def error_body(service: str, status: int, message: str | None = None) -> dict[str, str]:
    message = message or HTTPStatus(status).phrase
    if service == "braze":
        return {"message": message}
    if service == "pmp":
        return {
            "code": status,
            "name": HTTPStatus(status).phrase.replace(" ", ""),
            "message": message,
        }
    return {"code": BREVO_ERROR_CODES.get(status, "internal_error"), "message": message}


def parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _has_bearer_key(headers: dict[str, str]) -> bool:
    auth = headers.get("authorization", "")
    return auth.startswith("Bearer ") and bool(auth.removeprefix("Bearer ").strip())


class FakeVendors:
    """Braze's and Brevo's answers, their state, scripted failures and the records kept.

    Thread-safe: the threaded server calls :meth:`handle` from a thread per connection.
    """

    def __init__(
        self,
        strict_contacts: bool = False,
        brevo_limit: int = BREVO_LIMIT,
        brevo_window: float = BREVO_WINDOW,
        keep_calls: bool = True,
        clock: Callable[[], float] = time.time,
        pmp_page_size: int = 100,
    ) -> None:
        self.pmp_page_size = pmp_page_size
        self.brevo_limit = brevo_limit
        self.brevo_window = brevo_window
        self.keep_calls = keep_calls
        self.clock = clock
        self._initial_strict = strict_contacts
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self._calls: list[Call] = []
        self._stats = {service: ServiceStats() for service in SERVICES}
        self._windows = {
            "braze": FixedWindows(BRAZE_WINDOW),
            "brevo": FixedWindows(self.brevo_window),
            "pmp": FixedWindows(PMP_SESSIONS_WINDOW),
        }
        self._scripted: dict[str, deque[Answer]] = {s: deque() for s in SERVICES}
        self._outages: dict[str, int] = {}
        self._delays: dict[str, float] = {}
        self._throttled_until: dict[str, float] = {}  # epoch seconds
        self._contacts: dict[str, int] = {}  # identifier -> Brevo contact id
        self._braze_refused: dict[str, str] = {}  # external_id -> the 400's message
        self._brevo_refused: dict[str, str] = {}  # batch item identifier -> the 400's message
        self._brevo_deleted: set[str] = set()  # identifiers deleted, unknown until created
        self._braze_deleted: list[str] = []  # external ids /users/delete was given
        self._next_contact_id = 1
        self.strict_contacts = self._initial_strict
        self._brevo_webhooks: list[dict[str, Any]] = []
        self._ext_ids: dict[str, str] = {}  # contact identifier -> its ext_id
        self._pmp_tokens: set[str] = set()
        self._pmp_events: list[dict[str, Any]] = []  # as received, in order
        self._pmp_users: dict[str, dict[str, Any]] = {}  # organization_user_id -> user
        self._braze_profiles: dict[str, dict[str, Any]] = {}  # external_id -> told state
        self._brevo_state: dict[str, dict[str, Any]] = {}  # contact identifier -> told state

    # -- inspection and scripting ------------------------------------------------------------

    def calls(self, service: str | None = None) -> list[Call]:
        """Every call received, oldest first (none unless ``keep_calls``)."""
        if service is not None:
            check_service(service)
        with self._lock:
            return [c for c in self._calls if service is None or c.service == service]

    def stats(self, samples: bool = False) -> dict[str, Any]:
        """Counters per service; with ``samples`` the latencies too."""
        with self._lock:
            return {
                "brevo_limit": self.brevo_limit,
                "brevo_window": self.brevo_window,
                **{name: s.as_dict(samples) for name, s in self._stats.items()},
            }

    def reset(self) -> None:
        """Forget calls, counters, scripted failures, delays and contacts."""
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
        check_service(service)
        if body is None and status >= 400:
            body = error_body(service, status)
        with self._lock:
            for _ in range(count):
                self._scripted[service].append(Answer(status, body, dict(headers or {})))

    def outage(self, service: str, status: int = 503) -> None:
        """Every call of ``service`` answers ``status`` until :meth:`recover`."""
        with self._lock:
            self._outages[check_service(service)] = status

    def recover(self, service: str) -> None:
        with self._lock:
            self._outages.pop(check_service(service), None)

    def throttle(self, service: str, seconds: float) -> None:
        """For the next ``seconds``, every call of ``service`` answers 429 with rate-limit
        headers whose reset is the end of that time (0 lifts it): a 429 storm that tells
        clients exactly when to come back."""
        with self._lock:
            if seconds > 0:
                self._throttled_until[check_service(service)] = self.clock() + seconds
            else:
                self._throttled_until.pop(check_service(service), None)

    def set_delay(self, service: str, seconds: float) -> None:
        """Answer every call of ``service`` after ``seconds`` (0 for no delay)."""
        with self._lock:
            self._delays[check_service(service)] = seconds

    def refuse_braze_user(self, external_id: str, message: str = "Invalid user object") -> None:
        """Every ``/users/track`` call holding ``external_id`` answers 400 ``message``."""
        with self._lock:
            self._braze_refused[external_id] = message

    def refuse_brevo_contact(self, identifier: str, message: str = "Invalid attribute") -> None:
        """Every update of ``identifier`` answers 400 invalid_parameter ``message``: its
        ``PUT``, and as a whole every ``/v3/contacts/batch`` call with an item naming it."""
        with self._lock:
            self._brevo_refused[identifier] = message

    def add_brevo_contact(self, identifier: str, ext_id: str | None = None) -> None:
        """A contact Brevo knows; ``ext_id`` is what reading it by email answers."""
        with self._lock:
            self._add_contact(identifier)
            if ext_id is not None:
                self._ext_ids[identifier] = ext_id

    @property
    def brevo_contacts(self) -> set[str]:
        with self._lock:
            return set(self._contacts)

    @property
    def braze_deleted(self) -> list[str]:
        """Every external id Braze's /users/delete was given, in order."""
        with self._lock:
            return list(self._braze_deleted)

    @property
    def brevo_webhooks(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(hook) for hook in self._brevo_webhooks]

    @property
    def pmp_events(self) -> list[dict[str, Any]]:
        """Every consent event the PMP created, in order (a refused copy is not one)."""
        with self._lock:
            return list(self._pmp_events)

    def add_pmp_user(self, user: dict[str, Any]) -> None:
        """A user the PMP holds (``organization_user_id``, ``consents``...)."""
        with self._lock:
            self._pmp_users[user["organization_user_id"]] = dict(user)

    def expire_pmp_tokens(self) -> None:
        """Every token issued so far answers 401 from now on, as an expired one does."""
        with self._lock:
            self._pmp_tokens.clear()

    def edit_braze_profile(self, external_id: str, fields: dict[str, Any]) -> None:
        """Change a Braze profile behind prefsync's back: ``email_subscribe``,
        ``push_subscribe``, a subscription group by its id (``subscribed`` or
        ``unsubscribed``), any other name a custom attribute."""
        with self._lock:
            groups = [
                {"subscription_group_id": name, "subscription_state": value}
                for name, value in fields.items()
                if BRAZE_GROUP.fullmatch(name)
            ]
            rest = {
                name: value for name, value in fields.items() if not BRAZE_GROUP.fullmatch(name)
            }
            self._braze_told(external_id, {**rest, "subscription_groups": groups})

    def edit_brevo_contact(self, identifier: str, fields: dict[str, Any]) -> None:
        """Change a Brevo contact behind prefsync's back: ``emailBlacklisted``,
        ``smsBlacklisted``, any other name an attribute."""
        with self._lock:
            flags = {name: value for name, value in fields.items() if name in BREVO_FLAGS}
            attributes = {name: v for name, v in fields.items() if name not in BREVO_FLAGS}
            self._brevo_told(identifier, {**flags, "attributes": attributes})

    def braze_profile(self, external_id: str) -> dict[str, Any] | None:
        with self._lock:
            profile = self._braze_profiles.get(external_id)
            return json.loads(json.dumps(profile)) if profile is not None else None

    def brevo_state(self, identifier: str) -> dict[str, Any] | None:
        with self._lock:
            contact = self._brevo_state.get(identifier)
            return json.loads(json.dumps(contact)) if contact is not None else None

    def _braze_told(self, external_id: str, obj: dict[str, Any]) -> None:
        if not self.keep_calls:
            return
        profile = self._braze_profiles.setdefault(
            external_id,
            {
                "email_subscribe": "subscribed",
                "push_subscribe": "subscribed",
                "custom_attributes": {},
                "groups": {},
            },
        )
        for name, value in obj.items():
            if name in ("email_subscribe", "push_subscribe"):
                profile[name] = value
            elif name == "subscription_groups" and isinstance(value, list):
                for group in value:
                    profile["groups"][group["subscription_group_id"]] = group["subscription_state"]
            elif name not in BRAZE_USER_KEYS and not name.startswith("_"):
                profile["custom_attributes"][name] = value

    def _brevo_told(self, identifier: str, body: dict[str, Any]) -> None:
        if not self.keep_calls:
            return
        contact = self._brevo_state.setdefault(
            identifier, {"emailBlacklisted": False, "smsBlacklisted": False, "attributes": {}}
        )
        contact |= {name: body[name] for name in BREVO_FLAGS if name in body}
        if isinstance(body.get("attributes"), dict):
            contact["attributes"] |= body["attributes"]

    # -- answering ---------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], raw: bytes
    ) -> tuple[Answer, float]:
        """Answer one call to a destination (``headers`` with lower-case names) and record
        it; return the answer and the delay before sending it."""
        service = service_for(path)
        body = parse_json(raw)
        match = CONTACT_PATH.match(path)
        identifier = unquote(match["identifier"]) if match else None
        with self._lock:
            now = self.clock()
            account = headers.get("api-key", "") if service == "brevo" else "workspace"
            in_window, window_end = self._windows[service].count(account, now)
            answer = self._scripted_answer(service, now)
            if answer is None and service == "braze":
                answer = self._braze(method, path, query, headers, body, now)
            elif answer is None and service == "pmp":
                answer = self._pmp(method, path, query, headers, body)
            elif answer is None:
                over = in_window > self.brevo_limit
                answer = self._brevo(method, path, query, headers, body, identifier, over, now)
            rate = {}
            if service != "pmp":  # the PMP names no rate-limit window but in a 429
                rate = self._rate_headers(service, in_window, window_end, now, answer.status)
            answer.headers = {**rate, **answer.headers}
            self._stats[service].count(answer.status, in_window, now)
            if self.keep_calls:
                self._calls.append(
                    Call(
                        service=service,
                        method=method,
                        path=path,
                        query=query,
                        headers=headers,
                        body=body,
                        at=now,
                        status=answer.status,
                        identifier=identifier,
                        answer_headers=dict(answer.headers),
                        answer_body=answer.body,
                    )
                )
            return answer, self._delays.get(service, 0.0)

    def _rate_headers(
        self, service: str, calls: int, window_end: float, now: float, status: int
    ) -> dict[str, str]:
        """What the services say of the window a call was counted in."""
        limit = BRAZE_LIMIT if service == "braze" else self.brevo_limit
        remaining = "0" if status == 429 else str(max(0, limit - calls))
        if service == "braze":
            return {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": remaining,
                "X-RateLimit-Reset": str(math.ceil(window_end)),  # epoch seconds
            }
        return {
            "x-sib-ratelimit-limit": str(limit),
            "x-sib-ratelimit-remaining": remaining,
            "x-sib-ratelimit-reset": str(max(1, math.ceil(window_end - now))),  # seconds
        }

    def _scripted_answer(self, service: str, now: float) -> Answer | None:
        if service in self._outages:
            status = self._outages[service]
            return Answer(status, error_body(service, status) if status else None)
        until = self._throttled_until.get(service, 0.0)
        if now < until:
            return Answer(429, error_body(service, 429), self._reset_headers(service, until, now))
        if self._scripted[service]:
            scripted = self._scripted[service].popleft()
            return Answer(scripted.status, scripted.body, dict(scripted.headers))
        return None

    @staticmethod
    def _reset_headers(service: str, until: float, now: float) -> dict[str, str]:
        """The reset a throttled answer names: the throttle's end."""
        if service == "braze":  # epoch seconds, as Braze sends them
            return {"X-RateLimit-Reset": str(math.ceil(until))}
        if service == "pmp":
            return {"Retry-After": str(math.ceil(until - now))}
        return {"x-sib-ratelimit-reset": str(math.ceil(until - now))}  # seconds from now

    def _received(self, service: str, user: str, fields: Any, now: float) -> None:
        """One user delivered by an accepted call, with its enqueue stamp's latency."""
        stats = self._stats[service]
        stats.objects += 1
        stats.users.add(user)
        if not isinstance(fields, dict):
            return
        stamp = fields.get(BRAZE_STAMP, fields.get(BREVO_STAMP))
        if stamp is not None:
            with contextlib.suppress(TypeError, ValueError):
                stats.latencies.append(now - float(stamp))

    def _braze(
        self,
        method: str,
        path: str,
        query: dict[str, Any],
        headers: dict[str, str],
        body: Any,
        now: float,
    ) -> Answer:
        if (method, path) == ("POST", "/users/delete"):
            return self._braze_delete(headers, body)
        if (method, path) == ("POST", "/users/export/ids"):
            return self._braze_export(headers, body)
        if (method, path) == ("GET", "/subscription/status/get"):
            return self._braze_group_status(headers, query)
        if (method, path) != ("POST", "/users/track"):
            return Answer(404, error_body("braze", 404))
        if not _has_bearer_key(headers):
            return Answer(401, {"message": "Invalid API Key"})
        if not isinstance(body, dict) or not isinstance(body.get("attributes"), list):
            return Answer(400, {"message": "Request body must be JSON with an 'attributes' list"})
        objects = body["attributes"]
        refused = self._braze_refused and [
            self._braze_refused[obj.get("external_id")]
            for obj in objects
            if isinstance(obj, dict) and obj.get("external_id") in self._braze_refused
        ]
        if refused:
            return Answer(400, {"message": refused[0]})
        errors = []
        for index, obj in enumerate(objects):
            if not isinstance(obj, dict) or not any(key in obj for key in BRAZE_USER_KEYS):
                errors.append(
                    {
                        "type": "All objects must contain an external_id, braze_id, "
                        "user_alias, email or phone",
                        "input_array": "attributes",
                        "index": index,
                    }
                )
                continue
            self._received("braze", str(obj.get("external_id", obj.get("email", ""))), obj, now)
            if isinstance(obj.get("external_id"), str):
                self._braze_told(obj["external_id"], obj)
        answer: dict[str, Any] = {
            "message": "success",
            "attributes_processed": len(objects) - len(errors),
        }
        if errors:
            answer["errors"] = errors
        return Answer(201, answer)

    def _braze_delete(self, headers: dict[str, str], body: Any) -> Answer:
        if not _has_bearer_key(headers):
            return Answer(401, {"message": "Invalid API Key"})
        ids = body.get("external_ids") if isinstance(body, dict) else None
        kinds = [k for k in ("external_ids", "user_aliases", "braze_ids") if k in (body or {})]
        if len(kinds) != 1 or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return Answer(400, {"message": "Request must hold one list of external_ids"})
        if len(ids) > 50:
            return Answer(400, {"message": "Too many external_ids: at most 50"})
        self._braze_deleted += ids
        for external_id in ids:
            self._braze_profiles.pop(external_id, None)
        return Answer(201, {"deleted": len(ids), "message": "success"})

    def _braze_export(self, headers: dict[str, str], body: Any) -> Answer:
        if not _has_bearer_key(headers):
            return Answer(401, {"message": "Invalid API Key"})
        ids = body.get("external_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return Answer(400, {"message": "Request must hold a list of external_ids"})
        if len(ids) > BRAZE_READ_BATCH:
            return Answer(400, {"message": "Too many external_ids: at most 50"})
        users = [
            {
                "external_id": external_id,
                "email_subscribe": profile["email_subscribe"],
                "push_subscribe": profile["push_subscribe"],
                "custom_attributes": dict(profile["custom_attributes"]),
            }
            for external_id in ids
            if (profile := self._braze_profiles.get(external_id)) is not None
        ]
        invalid = [external_id for external_id in ids if external_id not in self._braze_profiles]
        return Answer(200, {"users": users, "invalid_user_ids": invalid, "message": "success"})

    def _braze_group_status(self, headers: dict[str, str], query: dict[str, Any]) -> Answer:
        if not _has_bearer_key(headers):
            return Answer(401, {"message": "Invalid API Key"})
        group = query.get("subscription_group_id")
        ids = query.get("external_id[]") or []
        ids = [ids] if isinstance(ids, str) else ids
        if not group or not ids or len(ids) > BRAZE_READ_BATCH:
            message = "subscription_group_id and 1 to 50 external_id[] are required"
            return Answer(400, {"message": message})
        status = {}
        for external_id in ids:
            state = self._braze_profiles.get(external_id, {}).get("groups", {}).get(group)
            status[external_id] = state.capitalize() if state else "Unknown"
        return Answer(200, {"status": status, "message": "success"})

    def _brevo(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        identifier: str | None,
        over_limit: bool,
        now: float,
    ) -> Answer:
        if path == "/v3/webhooks" and method in ("GET", "POST"):
            if not headers.get("api-key"):
                return Answer(401, {"code": "unauthorized", "message": "Key not found"})
            return self._brevo_webhook(method, query, body, now)
        if identifier is not None and method == "GET":
            if not headers.get("api-key"):
                return Answer(401, {"code": "unauthorized", "message": "Key not found"})
            return self._brevo_read(identifier)
        update = identifier is not None and method == "PUT"
        delete = identifier is not None and method == "DELETE"
        batch = (method, path) == ("POST", "/v3/contacts/batch")
        create = (method, path) == ("POST", "/v3/contacts")
        if not (update or delete or batch or create):
            return Answer(404, {"code": "not_found", "message": "Invalid route"})
        if not headers.get("api-key"):
            return Answer(401, {"code": "unauthorized", "message": "Key not found"})
        if over_limit:
            return Answer(429, {"code": "too_many_requests", "message": "Too many requests"})
        identifier_type = query.get("identifierType")
        if (update or delete) and identifier_type not in (None, *BREVO_IDENTIFIER_TYPES):
            return Answer(400, error_body("brevo", 400, "identifierType is not valid"))
        if delete:
            return self._brevo_delete(identifier)
        if not isinstance(body, dict):
            return Answer(400, error_body("brevo", 400, "Request body must be a JSON object"))
        if batch:
            return self._brevo_batch(body, now)
        if create:
            return self._brevo_create(body, now)
        return self._brevo_update(identifier, body, now)

    def _known(self, identifier: str) -> bool:
        unknown = (
            self.strict_contacts
            or identifier in self._brevo_deleted
            or identifier.endswith(f"@{NEVER_KNOWN_DOMAIN}")
        )
        return identifier in self._contacts or not unknown

    def _add_contact(self, identifier: str) -> int:
        self._brevo_deleted.discard(identifier)
        if identifier not in self._contacts:
            self._contacts[identifier] = self._next_contact_id
            self._next_contact_id += 1
        return self._contacts[identifier]

    def _brevo_read(self, identifier: str) -> Answer:
        told = self._brevo_state.get(identifier)
        if identifier not in self._contacts and told is None:
            return Answer(404, UNKNOWN_CONTACT)
        ext_id = self._ext_ids.get(identifier)
        told = told or {"emailBlacklisted": False, "smsBlacklisted": False, "attributes": {}}
        attributes = dict(told["attributes"]) | ({"EXT_ID": ext_id} if ext_id is not None else {})
        contact = {
            "id": self._contacts.get(identifier, 0),
            "email": identifier,
            "emailBlacklisted": told["emailBlacklisted"],
            "smsBlacklisted": told["smsBlacklisted"],
            "attributes": attributes,
        }
        return Answer(200, contact)

    def _brevo_delete(self, identifier: str) -> Answer:
        if not self._known(identifier):
            return Answer(404, UNKNOWN_CONTACT)
        self._contacts.pop(identifier, None)
        self._brevo_state.pop(identifier, None)
        self._brevo_deleted.add(identifier)
        return Answer(204)

    def _brevo_update(self, identifier: str, body: dict[str, Any], now: float) -> Answer:
        if identifier in self._brevo_refused:
            message = self._brevo_refused[identifier]
            return Answer(400, {"code": "invalid_parameter", "message": message})
        if not self._known(identifier):
            return Answer(404, UNKNOWN_CONTACT)
        self._received("brevo", identifier, body.get("attributes") or {}, now)
        self._brevo_told(identifier, body)
        return Answer(204)

    def _brevo_create(self, body: dict[str, Any], now: float) -> Answer:
        new_identifier = body.get("email") or body.get("ext_id")
        if not new_identifier:
            return Answer(
                400, {"code": "missing_parameter", "message": "email or ext_id is required"}
            )
        if new_identifier in self._contacts and not body.get("updateEnabled"):
            return Answer(400, {"code": "duplicate_parameter", "message": "Contact already exist"})
        self._received("brevo", str(new_identifier), body.get("attributes") or {}, now)
        self._brevo_told(str(new_identifier), body)
        if new_identifier in self._contacts:
            return Answer(204)
        return Answer(201, {"id": self._add_contact(new_identifier)})

    def _brevo_batch(self, body: dict[str, Any], now: float) -> Answer:
        contacts = body.get("contacts")
        if not isinstance(contacts, list) or not all(isinstance(c, dict) for c in contacts):
            return Answer(400, {"code": "missing_parameter", "message": "contacts required"})
        identifiers: list[str] = []
        for index, contact in enumerate(contacts):
            named = [key for key in BATCH_IDENTIFIERS if key in contact]
            if len(named) != 1:
                message = f"contacts[{index}]: pass exactly one of email, id or sms"
                return Answer(400, {"code": "invalid_parameter", "message": message})
            identifier = self._batch_identifier(named[0], contact[named[0]])
            if identifier in self._brevo_refused:
                message = self._brevo_refused[identifier]
                return Answer(400, {"code": "invalid_parameter", "message": message})
            identifiers.append(identifier)
        unknown = [
            str(i) for i, identifier in enumerate(identifiers) if not self._known(identifier)
        ]
        if unknown:
            message = f"No contact found for indexes {','.join(unknown)}"
            return Answer(404, {"code": "document_not_found", "message": message})
        for identifier, contact in zip(identifiers, contacts, strict=True):
            self._received("brevo", identifier, contact.get("attributes") or {}, now)
            self._brevo_told(identifier, contact)
        return Answer(204)

    def _batch_identifier(self, key: str, value: Any) -> str:
        """The contact a batch item names: its email or SMS, or for a Brevo contact id the
        identifier the contact was created with (the id itself when none was)."""
        if key == "id":
            by_id = {number: identifier for identifier, number in self._contacts.items()}
            return by_id.get(value, str(value))
        return str(value)

    def _brevo_webhook(self, method: str, query: dict[str, str], body: Any, now: float) -> Answer:
        if method == "GET":
            kind = query.get("type")
            hooks = [h for h in self._brevo_webhooks if kind is None or h["type"] == kind]
            return Answer(200, {"webhooks": [dict(h) for h in hooks]})
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            return Answer(400, error_body("brevo", 400, "url is required"))
        if not isinstance(body.get("events"), list) or not body["events"]:
            return Answer(400, error_body("brevo", 400, "events is required"))
        hook = {
            "id": len(self._brevo_webhooks) + 1,
            "url": body["url"],
            "events": list(body["events"]),
            "type": body.get("type", "transactional"),
            "description": body.get("description", ""),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(now)),
        }
        self._brevo_webhooks.append(hook)
        return Answer(201, {"id": hook["id"]})

    # -- the PMP ---------------------------------------------------------------------------------

    def _pmp(
        self, method: str, path: str, query: dict[str, str], headers: dict[str, str], body: Any
    ) -> Answer:
        route = path.removeprefix(PMP_PREFIX)
        if (method, route) == ("POST", "/sessions"):
            return self._pmp_session(body)
        if (method, route) not in (("POST", "/consents/events"), ("GET", "/consents/users")):
            return Answer(404, error_body("pmp", 404))
        token = headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token not in self._pmp_tokens:
            return Answer(401, error_body("pmp", 401, "jwt expired"))
        if not query.get("organization_id"):
            return Answer(400, error_body("pmp", 400, "organization_id is required"))
        if method == "GET":
            return self._pmp_users_page(query)
        return self._pmp_create_events(body)

    def _pmp_session(self, body: Any) -> Answer:
        if not isinstance(body, dict) or body.get("type") != "api-key":
            return Answer(400, error_body("pmp", 400, "type must be api-key"))
        if not body.get("key") or not body.get("secret"):
            return Answer(401, error_body("pmp", 401, "invalid key or secret"))
        calls, _ = self._windows["pmp"].count(f"sessions:{body['key']}", self.clock())
        if calls > PMP_SESSIONS_LIMIT:
            return Answer(429, error_body("pmp", 429), {"Retry-After": "15"})
        token = f"jwt-{secrets.token_hex(8)}"
        self._pmp_tokens.add(token)
        return Answer(201, {"access_token": token})

    def _pmp_create_events(self, body: Any) -> Answer:
        events = body if isinstance(body, list) else [body]
        if not 1 <= len(events) <= 100 or not all(isinstance(e, dict) for e in events):
            return Answer(400, error_body("pmp", 400, "one event or an array of up to 100"))
        for event in events:
            user = event.get("user")
            if not isinstance(user, dict) or not user.get("organization_user_id"):
                return Answer(400, error_body("pmp", 400, "user.organization_user_id is required"))
            if not isinstance(event.get("consents"), dict):
                return Answer(400, error_body("pmp", 400, "consents is required"))
        known = {event.get("id") for event in self._pmp_events}
        if any(event.get("id") is not None and event["id"] in known for event in events):
            return Answer(
                409, error_body("pmp", 409, "a consent event with this id already exists")
            )
        for event in events:
            self._pmp_events.append(event)
            self._pmp_merge(event)
        created = [{"id": event.get("id")} for event in events]
        return Answer(201, created if isinstance(body, list) else created[0])

    def _pmp_merge(self, event: dict[str, Any]) -> None:
        """The event's purposes merged into its user's status, as the PMP does."""
        user_id = event["user"]["organization_user_id"]
        user = self._pmp_users.setdefault(
            user_id,
            {"organization_user_id": user_id, "version": 0, "consents": {"purposes": []}},
        )
        purposes = {p["id"]: p for p in user["consents"]["purposes"]}
        for purpose in event["consents"].get("purposes", []):
            purposes[purpose["id"]] = {**purposes.get(purpose["id"], {}), **purpose}
        user["consents"]["purposes"] = list(purposes.values())
        user["version"] += 1
        user["updated_at"] = event.get("created_at")

    def _pmp_users_page(self, query: dict[str, str]) -> Answer:
        users = sorted(self._pmp_users.values(), key=lambda u: u["organization_user_id"])
        if one := query.get("organization_user_id"):
            users = [u for u in users if u["organization_user_id"] == one]
        start = int(query.get("$cursor") or 0)
        page = users[start : start + self.pmp_page_size]
        more = start + self.pmp_page_size < len(users)
        cursor = str(start + self.pmp_page_size) if more else None
        return Answer(200, {"data": page, "limit": self.pmp_page_size, "cursor": cursor})
