"""What every destination connector shares: the request and result types, the HTTP
transport and the small interface a connector implements.

A connector knows nothing of Celery or Redis: given a user, the values its mappings
resolved to and its config, it builds requests, sends them through a ``BaseTransport`` and
turns the answers into a ``Delivered``/``Skipped`` result or a ``RetryableError`` /
``PermanentError`` (worker.core.errors).

A connector reads nothing global either. It is built with a ``ConnectorSettings``: the
few PREFSYNC_* settings that shape its calls and the clock the workers share (which a
destination's epoch-time rate-limit reset is read against). ``worker.connectors.CONNECTORS``
holds connectors built with the default settings, which is all validating a config takes.
A process that delivers builds its own set with ``worker.connectors.connectors(settings)``
(worker.delivery.runtime does, from its settings) and reads its configs with it
(``parse_config(..., connectors=...)``): the ``connector`` of a config it delivers is then
built with that process's settings.

A transport is anything with ``send(request) -> HttpResponse`` (``BaseTransport``).
``Transport`` sends over HTTP; the deliverer wraps it in others that hold it and add one
thing each (pacing, counting the answers), so a connector never knows which it was given.
"""

from __future__ import annotations

import json
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import chain
from typing import Any, ClassVar, Literal, Protocol, TypeVar

import requests
from pydantic import BaseModel

from worker.core.errors import Deferred, DeliveryError, PermanentError, RetryableError
from worker.core.events import Value
from worker.core.masking import mask

SECRET_HEADERS = frozenset({"authorization", "api-key"})


class MappingLike(Protocol):
    """A mapping of a connector config: ``id`` names the destination field, ``value`` the
    PMP property."""

    @property
    def id(self) -> str: ...

    @property
    def value(self) -> str: ...


class Account(Protocol):
    """What a connector reads of a connector config. worker.connectors.model's
    ``ConnectorConfig`` is one; named here so that the interface does not import the
    model, which names its connector."""

    @property
    def id(self) -> str: ...

    @property
    def mappings(self) -> tuple[MappingLike, ...]: ...

    @property
    def mapping_ids(self) -> tuple[str, ...]: ...

    @property
    def options(self) -> Any: ...

    @property
    def upsert_mode(self) -> bool: ...

    @property
    def on_user_deleted(self) -> str: ...

    @property
    def connector(self) -> Connector: ...


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    json: Any = None

    def redacted(self) -> dict[str, Any]:
        """The request as an operator may see it: secret headers masked to their last 4."""
        headers = {
            name: _mask_credential(value) if name.lower() in SECRET_HEADERS else value
            for name, value in self.headers.items()
        }
        return {"method": self.method, "url": self.url, "headers": headers, "body": self.json}


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON when the answer was JSON, else the text (or None when empty)


@dataclass(frozen=True, slots=True)
class Delivered:
    status: int
    #: destination fields written, as sent (for the audit trail; never credentials)
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str  # one of worker.core.outcomes.SkipReason values
    detail: str = ""


Result = Delivered | Skipped


@dataclass(frozen=True, slots=True)
class Change:
    """One user's update for one connector.

    ``values``: mapped PMP property name (as the config writes it) -> its newest value, for
    the mappings that write a field of their own (properties without a value are not in
    it). ``fed``: the fields several mappings feed together (``Feed``) that must be sent,
    already computed from the person's whole current state -> their value.

    ``erase`` is set for a person's erasure (``user.deleted``, docs/erasure.md):
    ``"delete"`` deletes them in the destination (nothing else is sent);
    ``"unsubscribe"`` sends ``fed`` (every mapped subscription refused: ``refusals``) to
    a person the destination already knows, never creating one.
    """

    user: str
    values: Mapping[str, Value]
    fed: Mapping[str, Any] = field(default_factory=dict)
    erase: Literal["delete", "unsubscribe"] | None = None


@dataclass(frozen=True, slots=True)
class Feed:
    """A destination field that mappings feed together: Braze ``email_subscribe`` from
    ``OPTED_IN`` and ``UNSUBSCRIBED``, Brevo ``emailBlacklisted``... Each mapping with a value
    gives the field one state (``if_true`` or ``if_false``); the field takes the strongest
    of them (a refusal beats a consent). It is computed from the current value of every
    property feeding it, never from one event alone: a standing refusal must survive a
    later event that only opts in to something else (docs/mappings.md, "fed fields")."""

    field: str
    if_true: Any
    if_false: Any
    strongest_first: tuple[Any, ...]


def feeds(config: Account) -> list[tuple[MappingLike, Feed | None]]:
    """Each mapping of ``config`` with the field it feeds (None: a field of its own). Asked
    for every change: the connector is asked once per set of mapping ids."""
    return list(zip(config.mappings, _feeds(config.connector, config.mapping_ids), strict=True))


@lru_cache(maxsize=4096)
def _feeds(connector: Connector, mapping_ids: tuple[str, ...]) -> tuple[Feed | None, ...]:
    return tuple(connector.feed(mapping_id) for mapping_id in mapping_ids)


def fed_fields(config: Account, current: Mapping[str, Value]) -> dict[str, Any]:
    """The value of every field the config's mappings feed (``Connector.feed``), from
    ``current``: a mapping's property name (as the config writes it) -> its current value.
    A field none of whose properties has a value is left out. Raises ``PermanentError``
    when a feeding property holds text (the config maps the wrong property)."""
    states: dict[str, list[Any]] = {}
    order: dict[str, tuple[Any, ...]] = {}
    for mapping, feed in feeds(config):
        value = current.get(mapping.value)
        if feed is None or value is None:
            continue
        states.setdefault(feed.field, []).append(
            feed.if_true if flag(mapping.id, mapping.value, value) else feed.if_false
        )
        order[feed.field] = feed.strongest_first
    return {name: min(found, key=order[name].index) for name, found in states.items()}


def refusals(config: Account) -> dict[str, Any]:
    """Every field the config's mappings feed, set to its refusal (its strongest state):
    what ``on_user_deleted: unsubscribe`` sends, with the connector's ``erasure_refusals``.
    Custom attributes are left alone."""
    fed = {feed.field: feed.strongest_first[0] for _, feed in feeds(config) if feed is not None}
    return dict(config.connector.erasure_refusals) | fed


def erasure_change(config: Account, user: str) -> Change | None:
    """What ``config``'s ``on_user_deleted`` sends for a person's erasure; None for
    ``ignore``."""
    if config.on_user_deleted == "delete":
        return Change(user, {}, erase="delete")
    if config.on_user_deleted == "unsubscribe":
        return Change(user, {}, refusals(config), erase="unsubscribe")
    return None


def standalone_change(config: Account, user: str, values: Mapping[str, Value]) -> Change:
    """The change ``values`` make on their own, fed fields computed from them alone: what
    the dry-run preview shows (the worker computes fed fields from the whole state)."""
    return Change(user, values, fed_fields(config, values))


def own_fields(config: Account, values: Mapping[str, Value]) -> dict[str, Value]:
    """Mapping id -> value, for the mappings with a value that write a field of their own
    (not a ``Feed``): custom attributes, as the mapping id names them."""
    return {
        mapping.id: values[mapping.value]
        for mapping, feed in feeds(config)
        if feed is None and values.get(mapping.value) is not None
    }


def flag(mapping_id: str, property_name: str, value: Value) -> bool:
    """A consent property's true/false; ``PermanentError`` when it holds text."""
    if isinstance(value, bool):
        return value
    # A subscription state cannot be guessed from text: the config maps the wrong property.
    raise PermanentError(
        f"mapping {mapping_id} needs a true/false property, but {property_name} holds text; "
        "map it to an ..._enabled property",
        operator_action=True,
    )


#: How one change of a batch ended: its result, or the error that ended it for now
#: (``RetryableError``: try again later; ``PermanentError``: dead-letter it; ``Deferred``:
#: not sent, come back in ``wait`` seconds).
Answer = Result | DeliveryError | Deferred


@dataclass(frozen=True, slots=True)
class Quota:
    """What a destination's rate-limit headers say about the current window."""

    limit: int | None
    remaining: int
    reset_in: float  # seconds until the window resets


def _mask_credential(header_value: str) -> str:
    # Keep an auth scheme ("Bearer ") readable: it tells which kind of credential it is.
    scheme, space, secret = header_value.rpartition(" ")
    return f"{scheme}{space}{mask(secret)}"


@dataclass(frozen=True, slots=True)
class ConnectorSettings:
    """What a connector is given by the process that runs it: the PREFSYNC_* settings that
    shape its calls (the defaults are those of worker.infra.settings) and the clock."""

    #: users per Braze /users/track call (PREFSYNC_BRAZE_BATCH_SIZE)
    braze_batch_size: int = 50
    #: the Brevo API's base URL (PREFSYNC_SENDINBLUE_API_URL)
    sendinblue_api_url: str = "https://api.brevo.com/v3"
    #: the longest rate-limit reset a retry waits for (PREFSYNC_RATE_LIMIT_MAX_WAIT)
    rate_limit_max_wait: float = 60.0
    #: seconds since the epoch, on the clock every worker shares
    clock: Callable[[], float] = time.time
    #: contacts per Brevo POST /contacts/batch call (PREFSYNC_BREVO_BATCH_SIZE)
    brevo_batch_size: int = 100


class BaseTransport(ABC):
    """Sends one request and returns the answer, whatever its status; raises
    ``RetryableError`` when no answer came, or ``Deferred`` when the call must wait."""

    @abstractmethod
    def send(self, request: HttpRequest) -> HttpResponse: ...


class Transport(BaseTransport):
    """Sends ``HttpRequest``s over one pooled ``requests.Session``.

    Network errors and timeouts become ``RetryableError``; every answer, whatever its
    status, comes back as an ``HttpResponse`` for the connector to classify. No retries
    happen here: the task's schedule is the only retry loop.
    """

    def __init__(self, timeout: float, session: requests.Session | None = None) -> None:
        self.timeout = timeout
        self.session = session or requests.Session()

    def send(self, request: HttpRequest) -> HttpResponse:
        try:
            answer = self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                json=request.json,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            raise RetryableError(f"timed out after {self.timeout}s") from None
        except requests.RequestException as exc:
            raise RetryableError(f"network error: {type(exc).__name__}") from None
        return HttpResponse(answer.status_code, answer.headers, _body(answer))


def _body(answer: requests.Response) -> Any:
    if not answer.content:
        return None
    try:
        return answer.json()
    except ValueError:
        return answer.text[:2000]


class Connector(ABC):
    """One destination type. Register its class in ``worker/connectors/__init__.py``."""

    type_id: ClassVar[str]
    #: other names accepted for ``type_id`` in configs (e.g. "brevo")
    aliases: ClassVar[tuple[str, ...]] = ()
    #: the mapping ids with a meaning of their own (those ``feed`` knows by name): a new
    #: config's id a letter or two away from one is refused as a likely typo
    keywords: ClassVar[tuple[str, ...]] = ()
    #: credentials and destination options; validated when a config is stored
    options_model: ClassVar[type[BaseModel]]
    #: calls per second per account unless PREFSYNC_RATE_LIMITS says otherwise
    default_rate: ClassVar[float]
    #: calls per second per account of the endpoint that deletes people, when the
    #: destination limits it apart from updates (paced on a bucket of its own); None when
    #: deletions count against the same limit as updates
    erasure_rate: ClassVar[float | None] = None
    #: what ``on_user_deleted: unsubscribe`` refuses whatever the mappings feed (beside
    #: every fed field's refusal: ``refusals``)
    erasure_refusals: ClassVar[Mapping[str, Any]] = {}
    #: calls per second per account of the endpoints ``read`` calls, and how many people
    #: one ``read`` takes
    read_rate: ClassVar[float] = 1.0
    read_batch: ClassVar[int] = 1
    #: a fed field's value that is the destination's default, no decision either way:
    #: found against it is no drift, and it is drift only against a decided value
    no_decision: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, settings: ConnectorSettings | None = None) -> None:
        self.settings = settings or ConnectorSettings()

    @property
    def batch_size(self) -> int:
        """The most users' changes one ``deliver_many`` call takes; 1 when the destination
        has no batch API (each change is its own call)."""
        return 1

    def call_groups(self, users: Sequence[str]) -> list[list[str]]:
        """``users`` one destination call's worth at a time: the deliverer claims (locks and
        merges) and sends each group on its own, so what a deferral or a failure leaves
        unsent was never claimed. By default ``batch_size`` users a group, in order."""
        size = self.batch_size
        return [list(users[start : start + size]) for start in range(0, len(users), size)]

    def folded_id(self, user: str) -> str | None:
        """The form in which the destination compares ``user`` when it ignores letter case
        (every spelling of it names one person there), or None when it compares it
        exactly. By default ids are compared exactly."""
        return None

    @property
    def delivery_mode(self) -> str:
        """How changes travel, in a few words (``prefsync connectors check`` shows it)."""
        return "one call per user"

    def quota(self, headers: Mapping[str, str]) -> Quota | None:
        """What the rate-limit headers of an answer say is left, if the destination sends
        any: it slows the calls down before the quota is spent (worker.delivery.pacing)."""
        return None

    def mapping_problem(self, mapping_id: str) -> str | None:
        """Why a mapping with this id cannot be accepted (checked when a config is stored),
        or None when it can."""
        return None

    def feed(self, mapping_id: str) -> Feed | None:
        """The field a mapping with this id feeds together with others, or None when it
        writes a field of its own (a custom attribute)."""
        return None

    def written_fields(self, config: Account, change: Change) -> dict[str, Any]:
        """The fields ``change`` writes, one entry each by the destination's own name (a
        Braze subscription group by its id, a Brevo attribute by its name): what ``read``
        answers, so that the two compare (``prefsync reconcile``)."""
        raise NotImplementedError(f"{self.type_id} cannot be read back")

    def read(
        self, transport: BaseTransport, config: Account, users: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """What the destination holds for each of ``users`` (at most ``read_batch``), as
        ``written_fields`` names it, for the fields ``config`` writes; None for a person
        it does not know. Errors as a delivery's."""
        raise NotImplementedError(f"{self.type_id} cannot be read back")

    @abstractmethod
    def requests(self, config: Account, change: Change) -> list[HttpRequest]:
        """Every request ``deliver`` may send, in order (fallbacks such as a create after a
        404 included). Empty when the change maps to nothing. Used by the dry-run preview."""

    def effective(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """``fields`` (``written_fields``'s names) as the destination acts on them: by
        default as they are."""
        return dict(fields)

    @abstractmethod
    def deliver(self, transport: BaseTransport, config: Account, change: Change) -> Result:
        """Send the change and classify the answer, or raise Retryable/PermanentError."""

    def deliver_many(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        """Deliver the changes of several users (one change per user, at most
        ``batch_size``); one answer per change, in order. A destination with a batch API
        overrides this.

        By default one ``deliver`` per change (``one_by_one``).
        """
        return one_by_one(partial(self.deliver, transport, config), changes)

    def deliver_erasures(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        """Delete several people (changes whose ``erase`` is ``"delete"``); one answer per
        change, in order. Deleting someone the destination does not know is done, not an
        error. By default each goes through ``deliver``; a destination with a batch
        deletion endpoint overrides this. The deliverer paces these calls on a bucket of
        their own when ``erasure_rate`` is set."""
        return self.deliver_many(transport, config, changes)


Item = TypeVar("Item")


def one_by_one(send: Callable[[Item], Result], items: Sequence[Item]) -> list[Answer]:
    """``send`` each item (one call or so each) and return its answer, stopping at the
    first transient failure or deferral: the items left get the same answer, unsent. A
    destination that just failed a call would likely fail the next, each costing up to the
    HTTP timeout."""
    answers: list[Answer] = []
    for sent, item in enumerate(items):
        try:
            answers.append(send(item))
        except PermanentError as exc:
            answers.append(exc)
        except (RetryableError, Deferred) as exc:
            return answers + [exc] * (len(items) - sent)
    return answers


def stop_of(answers: Iterable[Answer]) -> RetryableError | Deferred | None:
    """The transient failure or deferral among ``answers`` that ended a batch, if any."""
    return next((a for a in answers if isinstance(a, RetryableError | Deferred)), None)


#: What one call of a batch API said of each of its items, in order: its answer, or None
#: for an item it left unanswered (to send again); or None for the whole call when the
#: call is to be split in halves.
CallAnswers = Sequence[Answer | None] | None


def answer_in_calls(
    items: Sequence[Item], size: int, send: Callable[[Sequence[Item]], CallAnswers]
) -> list[Answer]:
    """Send ``items`` in calls of up to ``size`` through ``send`` (one call each time it is
    called) and return one answer per item, in order.

    A call refused as a whole for what may be one item (``send`` returns None) is split in
    halves, the first half sent first, until the item at fault is alone: it alone is
    refused, never the others of its call. Items a call left unanswered (a destination that
    refuses a whole call for a few items it names) go again together, before any other
    call. ``RetryableError`` or ``Deferred`` raised by ``send`` ends it all: that call's
    items and every later one get it, unsent (the destination takes no calls for now).
    """
    calls = deque(
        list(range(start, min(start + size, len(items)))) for start in range(0, len(items), size)
    )
    answers: dict[int, Answer] = {}
    while calls:
        call = calls.popleft()
        try:
            said = send([items[index] for index in call])
        except (RetryableError, Deferred) as stop:
            for index in chain(call, *calls):
                answers[index] = stop
            break
        again = call if said is None else [i for i, a in zip(call, said, strict=True) if a is None]
        if said is not None:
            answers |= {i: a for i, a in zip(call, said, strict=True) if a is not None}
        if len(again) == len(call):
            assert len(call) > 1, "a call of one item must answer it"
            half = len(call) // 2
            # extendleft reverses what it is given: the first half goes out first.
            calls.extendleft((call[half:], call[:half]))
        elif again:
            calls.appendleft(again)
    return [answers[index] for index in range(len(items))]


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A header by its lower-case name: HTTP/2 sends names in lower case, HTTP/1.1 servers
    as they please."""
    return next((value for key, value in headers.items() if key.lower() == name), None)


def header_number(headers: Mapping[str, str], name: str) -> float | None:
    """A header's finite number, or None when it is missing or not a number."""
    raw = header(headers, name)
    try:
        number = float(raw) if raw is not None else math.nan
    except ValueError:
        return None
    return number if math.isfinite(number) else None


# A destination's explanation is kept this short in dead letters, audit and logs.
REASON_LENGTH = 300


def answer_reason(
    body: Any, secrets: Iterable[str], message: Callable[[dict[str, Any]], str]
) -> str:
    """A destination's explanation of its answer, short, and with every credential in
    ``secrets`` masked should it echo one. ``message`` words a body that has a
    ``message`` (each destination adds its own code or details)."""
    if body is None:
        text = "no body"
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        text = message(body)
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, ensure_ascii=False)
    for secret in secrets:
        text = text.replace(secret, mask(secret))
    return text if len(text) <= REASON_LENGTH else text[:REASON_LENGTH] + "…"


def common_refusal(
    vendor: str,
    response: HttpResponse,
    reason: str,
    endpoint: str,
    retry_after: Callable[[], float | None],
) -> DeliveryError | None:
    """What every destination means by a redirect (never followed: ``endpoint`` says which
    setting to check), a 429 (come back at ``retry_after``) and 408, 425 or 5xx (try
    again); None for any other status, which the connector reads itself. 425 is in no
    vendor's table, but it means "too early, ask again": treating it as transient keeps a
    consent change from being given up on."""
    status = response.status
    if 300 <= status < 400:
        location = header(response.headers, "location") or "nowhere"
        return PermanentError(
            f"{vendor} answered HTTP {status}, a redirect to {location}, which is not "
            f"followed: check {endpoint}; {reason}",
            status=status,
            operator_action=True,
        )
    if status == 429:
        return RetryableError(
            f"{vendor} rate limit reached (HTTP 429): {reason}",
            status=status,
            retry_after=retry_after(),
        )
    if status in (408, 425) or status >= 500:
        return RetryableError(f"{vendor} is unavailable (HTTP {status}): {reason}", status=status)
    return None
