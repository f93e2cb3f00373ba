"""Brevo (formerly Sendinblue): one ``PUT {base}/contacts/{identifier}`` per change and, in
upsert mode, a ``POST {base}/contacts`` that creates the contact Brevo did not know; or,
for several contacts named by an email address, ``POST {base}/contacts/batch`` calls.

How a mapping id becomes part of the update (docs/mappings.md#brevo-sendinblue):

- ``EMAIL_CAMPAIGNS_SUBSCRIBED`` (any case): true gives ``emailBlacklisted: false``, false
  gives ``emailBlacklisted: true``; ``SMS_CAMPAIGNS_SUBSCRIBED`` gives ``smsBlacklisted``
  the same way. Both are ``Feed``s (worker.connectors.base): computed from the person's
  whole current state, a refusal winning when several mappings feed one;
- anything else is a contact attribute named by the id in upper case (Brevo's attribute
  names are), set to the value as it is.

A mapping id naming an identifier or a top-level field of the contact (``EMAIL``, ``SMS``,
``EXT_ID``, ``emailBlacklisted``... in any case) is refused when the config is stored:
changing a blocklisted contact's email clears its blocklist, which would resubscribe the
person, and ``smsBlacklisted`` as an attribute would not block anything.

The contact is the PMP's ``organization_user_id``. One that looks like an email address
(text, one ``@``, a domain with a dot, no spaces) is addressed as ``identifierType=email_id``,
anything else as ``ext_id``. An identifier that cannot name one contact (blank, ``.`` or
``..``, invisible characters, overlong: ``identifier_problem``) is never sent: the change
is refused (dead-lettered) for this connector. In upsert mode, a contact addressed by an
email Brevo would not take as one (``create_problem``: ``jane..doe@example.com``) is never
created: after the update's 404 the change is dead-lettered, the create not sent. The base
URL is the connector's setting (``sendinblue_api_url``), so tests and local stacks can point
it elsewhere.

Erasures (``on_user_deleted``, docs/erasure.md): ``unsubscribe`` is the update with
``emailBlacklisted`` true whatever the mappings (and ``smsBlacklisted`` when an SMS mapping
exists) and no attribute, never followed by a create (an unknown contact is skipped); ``delete`` is
``DELETE {base}/contacts/{identifier}?identifierType=...``: 204 done, 404
``document_not_found`` already gone (skipped, ``contact_unknown``). Deletions count
against the same contact-call limit as updates, so they share the account's pacing.

Batches (docs/delivery.md#brevo-batches): ``deliver_many`` sends the updates of contacts
named by an email address in ``POST {base}/contacts/batch`` calls of up to
``brevo_batch_size`` (a contact named by ``ext_id`` cannot be: a batch item finds its
contact by ``email``, ``id`` or ``sms`` only, so it keeps its own ``PUT``). Brevo answers a
batch as a whole: 204 updated every contact; a 404 ``document_not_found`` naming the
zero-based indexes of contacts it does not know updated none, so those are treated as an
unknown contact is (skipped, or created one by one in upsert mode) and the others are sent
again; a 400, or an answer that names no contact (a 207, a 404 without indexes), splits
the call in halves until the contact at fault is alone. A contact alone goes as the
single-contact ``PUT``, whose answers name it. Two contacts whose emails differ only in
letter case are one Brevo contact: the second goes on its own, after the batch.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote, unquote

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)

from worker.connectors.base import (
    Account,
    Answer,
    BaseTransport,
    CallAnswers,
    Change,
    Connector,
    ConnectorSettings,
    Delivered,
    Feed,
    HttpRequest,
    HttpResponse,
    Quota,
    Result,
    Skipped,
    answer_in_calls,
    answer_reason,
    common_refusal,
    header_number,
    one_by_one,
    own_fields,
    stop_of,
)
from worker.core.errors import PermanentError, RetryableError
from worker.core.outcomes import SkipReason

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Brevo's OpenAPI declares a create's ``email`` as ``format: email``, and Brevo refuses one
# that is not: dot-separated atoms before the @ (no leading, trailing or double dot), a
# domain of letter, digit and hyphen labels (no underscore) with at least one dot. ASCII:
# with re.I alone, [a-z] would also match the Kelvin sign and the long s.
_ATOM = r"[a-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_CREATABLE_EMAIL = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+{_LABEL}", re.I | re.A)
# Blocklisted is the refusal, so True is the stronger state.
_BLOCKLISTS = {
    "EMAIL_CAMPAIGNS_SUBSCRIBED": Feed("emailBlacklisted", False, True, (True, False)),
    "SMS_CAMPAIGNS_SUBSCRIBED": Feed("smsBlacklisted", False, True, (True, False)),
}
_EMAIL_HINT = "map EMAIL_CAMPAIGNS_SUBSCRIBED to change whether the contact gets email campaigns"
_SMS_HINT = "map SMS_CAMPAIGNS_SUBSCRIBED to change whether the contact receives SMS campaigns"
_CONTACT_HINT = "it identifies the Brevo contact, and a mapping must not change who is updated"
_LIST_HINT = "list membership comes from the connector's list_id option, not from a mapping"
#: Mapping ids (upper case, as Brevo's attribute names are) that name an identifier or a
#: top-level field of a contact, with what to map instead (docs/vendors.md#brevo). As attributes
#: they would update an identifier (changing a blocklisted contact's EMAIL clears its
#: blocklist, resubscribing the person) or miss the field they seem to set.
_RESERVED = {
    "EMAIL": f"{_CONTACT_HINT}, and changing it clears a blocklist; {_EMAIL_HINT}",
    "SMS": f"{_CONTACT_HINT} (it is the number itself); {_SMS_HINT}",
    "WHATSAPP": f"{_CONTACT_HINT} (it is the number itself)",
    "EXT_ID": _CONTACT_HINT,
    "LANDLINE_NUMBER": f"{_CONTACT_HINT} (it is the number itself)",
    "EMAILBLACKLISTED": f"it is a field of the contact, set by the connector; {_EMAIL_HINT}",
    "SMSBLACKLISTED": f"it is a field of the contact, set by the connector; {_SMS_HINT}",
    "LISTIDS": _LIST_HINT,
    "UNLINKLISTIDS": _LIST_HINT,
    "UPDATEENABLED": "it is an option of the call, set by the connector",
}
# Brevo's rate-limit windows are one second and one hour: a reset further away than an
# hour cannot be seconds, and is read as the milliseconds some integrators have seen.
_LONGEST_WINDOW = 3600.0
# Brevo's public documentation gives no limit for a contact identifier. An email address
# has at most 254 characters (RFC 5321); a longer identifier is refused rather than sent
# to be cut or matched in ways nobody can check.
_LONGEST_IDENTIFIER = 254
# Control, format (invisible: zero-width, bidirectional) and surrogate characters, and the
# line and paragraph separators: an identifier holding one cannot be told from another.
_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_PATH_SEPARATORS = re.compile(r"[/\\]")
# "No contact found for indexes 3,4": the zero-based positions in the batch's contacts.
_UNKNOWN_INDEXES = re.compile(r"\bindex(?:es)?\s*:?\s*(\d+(?:\s*,\s*\d+)*)\s*$", re.I)


class Options(BaseModel):
    """Credentials and options of one Brevo account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The older config shape calls the key api_key, the newer one private_api_key.
    api_key: SecretStr = Field(validation_alias=AliasChoices("api_key", "private_api_key"))
    # The list new contacts join (upsert mode only).
    list_id: PositiveInt | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if isinstance(data, dict) and "api_key" in data and "private_api_key" in data:
            raise ValueError("give either api_key or private_api_key, not both")
        return data

    @field_validator("list_id", mode="before")
    @classmethod
    def _not_a_boolean(cls, list_id: Any) -> Any:
        # true would otherwise pass as list 1.
        if isinstance(list_id, bool):
            raise ValueError("must be a positive integer")
        return list_id

    @field_validator("api_key")
    @classmethod
    def _single_token(cls, key: SecretStr) -> SecretStr:
        # A space or line break inside would be refused by the HTTP client on every send.
        secret = key.get_secret_value().strip()
        if not secret:
            raise ValueError("must not be empty")
        if any(char.isspace() or not char.isprintable() for char in secret):
            raise ValueError("must be a single token, without spaces or line breaks")
        return SecretStr(secret)


#: the marketing events a bidirectional connector's webhook sends (docs/two-way-consent.md)
SIGNAL_EVENTS = ("unsubscribed", "spam")


class SendinblueConnector(Connector):
    type_id = "sendinblue"
    aliases = ("brevo",)
    options_model = Options
    # Contact calls: 10 per second per account on every plan (docs/vendors.md#brevo).
    default_rate = 10.0
    # An erasure's unsubscribe stops email even when the connector maps only SMS or
    # attributes (docs/erasure.md): the person is gone from the PMP.
    erasure_refusals = {"emailBlacklisted": True}
    # GET /v3/contacts/{identifier} counts against the same 10 contact calls a second.
    read_rate = 10.0

    def quota(self, headers: Mapping[str, str]) -> Quota | None:
        remaining = header_number(headers, "x-sib-ratelimit-remaining")
        reset_in = _reset_in(headers)
        if remaining is None or reset_in is None:
            return None
        limit = header_number(headers, "x-sib-ratelimit-limit")
        return Quota(int(limit) if limit else None, int(remaining), reset_in)

    keywords = tuple(_BLOCKLISTS)

    def mapping_problem(self, mapping_id: str) -> str | None:
        hint = _RESERVED.get(mapping_id.upper())
        if hint is None:
            return None
        return f"{mapping_id!r} is reserved by Brevo and never an attribute: {hint}"

    def feed(self, mapping_id: str) -> Feed | None:
        return _BLOCKLISTS.get(mapping_id.upper())

    def requests(self, config: Account, change: Change) -> list[HttpRequest]:
        _checked(change.user)
        options, user, base = _options(config), change.user, _base_url(self.settings)
        if change.erase == "delete":
            return [_delete_request(base, options, user)]
        fields = _fields(config, change)
        if not fields:
            return []
        update = _update_request(base, options, user, fields)
        if config.upsert_mode and change.erase is None and create_problem(user) is None:
            return [update, _create_request(base, options, user, fields)]
        return [update]

    def deliver(self, transport: BaseTransport, config: Account, change: Change) -> Result:
        # Refused whatever the values: the event is dead-lettered for this connector.
        _checked(change.user)
        options, user, base = _options(config), change.user, _base_url(self.settings)
        if change.erase == "delete":
            response = transport.send(_delete_request(base, options, user))
            if _contact_unknown(response):
                return Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact: gone")
            return _classify(response, {"deleted": True}, options, self.settings)
        fields = _fields(config, change)
        if not fields:
            return Skipped(SkipReason.NO_MAPPED_VALUES, "no mapping has a value")
        response = transport.send(_update_request(base, options, user, fields))
        if _contact_unknown(response):
            # An erasure never creates the contact it refuses.
            if not config.upsert_mode or change.erase is not None:
                return Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact")
            if problem := create_problem(user):
                raise PermanentError(problem)
            response = transport.send(_create_request(base, options, user, fields))
        return _classify(response, fields, options, self.settings)

    @property
    def batch_size(self) -> int:
        return self.settings.brevo_batch_size

    def call_groups(self, users: Sequence[str]) -> list[list[str]]:
        # A batch's worth of email-named contacts, then each other contact alone (its call).
        emails = [user for user in users if _EMAIL.fullmatch(user)]
        others = [[user] for user in users if not _EMAIL.fullmatch(user)]
        return super().call_groups(emails) + others

    def folded_id(self, user: str) -> str | None:
        # Brevo matches a contact's email address without letter case (docs/erasure.md).
        return user.casefold() if _EMAIL.fullmatch(user) else None

    @property
    def delivery_mode(self) -> str:
        return (
            f"contacts named by an email address: batches of up to {self.batch_size} per "
            "POST /v3/contacts/batch call; others (ext_id): one PUT /v3/contacts/{id} each"
        )

    def deliver_many(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        """The email-named contacts' updates in batch calls, then every other change on its
        own (``deliver``), then the creates of the contacts a batch found unknown (upsert
        mode). A transient failure or a deferral stops what comes after it."""
        answers: dict[int, Answer] = {}
        batched: list[_Item] = []
        alone: list[int] = []  # positions sent with deliver, one by one
        emails: set[str] = set()
        for position, change in enumerate(changes):
            if change.erase == "delete" or not _EMAIL.fullmatch(change.user):
                alone.append(position)
                continue
            if problem := identifier_problem(change.user):
                answers[position] = _refused(problem)
                continue
            fields = _fields(config, change)
            if not fields:
                answers[position] = Skipped(SkipReason.NO_MAPPED_VALUES, "no mapping has a value")
            elif change.user.casefold() in emails:
                # The same Brevo contact twice in one call could apply in either order.
                alone.append(position)
            else:
                emails.add(change.user.casefold())
                batched.append(_Item(position, change, fields))

        batch = _Batch(self, transport, config)
        sent = answer_in_calls(batched, self.batch_size, batch.send)
        answers |= {item.position: answer for item, answer in zip(batched, sent, strict=True)}
        stop = stop_of(answers.values())
        one = partial(self.deliver, transport, config)
        done = [stop] * len(alone) if stop else one_by_one(one, [changes[p] for p in alone])
        answers |= dict(zip(alone, done, strict=True))
        # Created last: a create is a call per contact, the updates were one per batch.
        stop = stop_of(answers.values())
        created = batch.to_create
        done = [stop] * len(created) if stop else one_by_one(batch.create, created)
        answers |= {item.position: answer for item, answer in zip(created, done, strict=True)}
        return [answers[position] for position in range(len(changes))]

    def deliver_erasures(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        # Brevo deletes one contact a call: the batch endpoint only updates.
        return one_by_one(partial(self.deliver, transport, config), changes)

    def contact_ext_id(self, transport: BaseTransport, config: Account, email: str) -> str | None:
        """The ``ext_id`` of the contact with that email (its ``ext_id``, else its
        ``EXT_ID`` attribute): who a Brevo webhook naming an email is. None when Brevo has
        no such contact or the contact has no ext_id. Errors as a delivery's."""
        options = _options(config)
        url = f"{_base_url(self.settings)}/contacts/{quote(_checked(email), safe='')}"
        request = HttpRequest("GET", f"{url}?identifierType=email_id", _headers(options))
        response = transport.send(request)
        if _contact_unknown(response):
            return None
        if response.status != 200:
            _classify(response, {}, options, self.settings)  # raises for every non-2xx
            raise RetryableError(f"Brevo answered a contact read with HTTP {response.status}")
        body = response.body if isinstance(response.body, dict) else {}
        attributes = body.get("attributes") if isinstance(body.get("attributes"), dict) else {}
        for found in (body.get("ext_id"), attributes.get("EXT_ID")):
            if isinstance(found, str | int) and not isinstance(found, bool) and str(found):
                return str(found)
        return None

    def written_fields(self, config: Account, change: Change) -> dict[str, Any]:
        fields = _fields(config, change)
        return fields.pop("attributes", {}) | fields

    def read(
        self, transport: BaseTransport, config: Account, users: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """``GET /v3/contacts/{identifier}`` per contact: its blocklist flags and its
        attributes (Brevo's names, upper case)."""
        options, base = _options(config), _base_url(self.settings)
        held: dict[str, dict[str, Any] | None] = {}
        for user in users:
            request = HttpRequest("GET", _contact_url(base, user), _headers(options))
            response = transport.send(request)
            if _contact_unknown(response):
                held[user] = None
                continue
            if response.status != 200 or not isinstance(response.body, dict):
                _classify(response, {}, options, self.settings)  # raises for every non-2xx
                raise RetryableError(f"Brevo answered a contact read with HTTP {response.status}")
            body = response.body
            attributes = body.get("attributes")
            flags = {name: body.get(name) for name in ("emailBlacklisted", "smsBlacklisted")}
            held[user] = (attributes if isinstance(attributes, dict) else {}) | flags
        return held

    def marketing_webhooks(self, transport: BaseTransport, config: Account) -> list[dict[str, Any]]:
        """The account's marketing webhooks (``GET /v3/webhooks?type=marketing``)."""
        options = _options(config)
        url = f"{_base_url(self.settings)}/webhooks?type=marketing"
        response = transport.send(HttpRequest("GET", url, _headers(options)))
        if response.status != 200:
            _classify(response, {}, options, self.settings)  # raises for every non-2xx
            raise RetryableError(f"Brevo answered a webhook list with HTTP {response.status}")
        hooks = response.body.get("webhooks") if isinstance(response.body, dict) else None
        return [hook for hook in hooks or [] if isinstance(hook, dict)]

    def create_marketing_webhook(
        self, transport: BaseTransport, config: Account, url: str, description: str
    ) -> Any:
        """Create a marketing webhook sending ``unsubscribed`` and ``spam`` to ``url``;
        its id."""
        options = _options(config)
        body = {
            "url": url,
            "events": list(SIGNAL_EVENTS),
            "type": "marketing",
            "description": description,
        }
        request = HttpRequest(
            "POST", f"{_base_url(self.settings)}/webhooks", _headers(options), body
        )
        response = transport.send(request)
        _classify(response, {}, options, self.settings)  # 201, or raises
        return response.body.get("id") if isinstance(response.body, dict) else None


@dataclass(frozen=True, slots=True)
class _Item:
    """One contact's update as a batch sends it: where its answer goes among the changes,
    the change, and the fields it writes."""

    position: int
    change: Change
    fields: dict[str, Any]

    @property
    def body(self) -> dict[str, Any]:
        return {"email": self.change.user, **self.fields}


class _Batch:
    """The batch calls of one ``deliver_many``: ``send`` is one call (for
    ``answer_in_calls``); the contacts a call found unknown that upsert mode creates are
    kept in ``to_create``, for ``create`` once every update was sent."""

    def __init__(self, connector: SendinblueConnector, transport: BaseTransport, config: Account):
        self.connector = connector
        self.transport = transport
        self.config = config
        self.options = _options(config)
        self.base = _base_url(connector.settings)
        self.to_create: list[_Item] = []

    def send(self, call: Sequence[_Item]) -> CallAnswers:
        if len(call) == 1:
            # A contact alone: the single-contact update, whose answers name it (a
            # transient failure or a deferral is raised: it ends the batch).
            try:
                return [self.connector.deliver(self.transport, self.config, call[0].change)]
            except PermanentError as refused:
                return [refused]
        response = self.transport.send(_batch_request(self.base, self.options, call))
        if response.status == 204:
            return [Delivered(204, item.fields) for item in call]
        if _contact_unknown(response):
            unknown = _unknown_indexes(response.body, len(call))
            if unknown is None:
                return None  # names no contact of the call: halves will
            return [self._unknown(item) if i in unknown else None for i, item in enumerate(call)]
        if response.status in (207, 400):
            # 207 (older docs: some updated) names contacts by Brevo ids, not by ours; a 400
            # may be one malformed contact: halves until the one at fault is alone.
            return None
        try:
            _classify(response, {}, self.options, self.connector.settings)
        except PermanentError as refused:
            return [refused] * len(call)
        # 201: a success a batch is not documented to give; taken as the update applied.
        return [Delivered(response.status, item.fields) for item in call]

    def _unknown(self, item: _Item) -> Skipped:
        # As the single update treats it: an erasure never creates the contact it refuses.
        if self.config.upsert_mode and item.change.erase is None:
            self.to_create.append(item)
        return Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact")

    def create(self, item: _Item) -> Result:
        """Create a contact a batch found unknown (upsert mode), as the single update would:
        never one whose email Brevo would refuse to create."""
        if problem := create_problem(item.change.user):
            raise PermanentError(problem)
        request = _create_request(self.base, self.options, item.change.user, item.fields)
        response = self.transport.send(request)
        return _classify(response, item.fields, self.options, self.connector.settings)


def identifier_problem(user: str) -> str | None:
    """Why ``user`` cannot name one Brevo contact, or None when it can.

    Such an identifier is never sent (docs/mappings.md): ``..`` in a URL's path is resolved
    away (``PUT /v3/contacts/..`` is ``PUT /v3/``), and a blank, invisible or overlong one
    may name no contact or another one. The identifier itself is not quoted: it is
    personal data, and the dead letter keeps it."""
    if not user.strip():
        return "it is empty or blank"
    if len(user) > _LONGEST_IDENTIFIER:
        return f"it is longer than {_LONGEST_IDENTIFIER} characters"
    if any(unicodedata.category(char) in _INVISIBLE for char in user):
        return "it holds a control or invisible character"
    # Also as a server would read it once percent-decoded ("%2e%2e" is "..").
    for text in dict.fromkeys((user, unquote(user))):
        segments = _PATH_SEPARATORS.split(text)
        if any(segment.strip() in (".", "..") for segment in segments):
            return "it is or holds a '.' or '..' path segment, which a URL resolves away"
        if len(segments) > 1 and not all(segments):
            return "it holds an empty path segment (a '/' at either end, or '//')"
    return None


def create_problem(user: str) -> str | None:
    """Why Brevo would refuse to create the contact ``user`` names, or None when it would
    not: an identifier addressed as an email must be one by Brevo's rule (``format:
    email``), else the create is never sent. The address itself is not quoted: it is
    personal data, and the dead letter keeps it."""
    if not _EMAIL.fullmatch(user) or _CREATABLE_EMAIL.fullmatch(user):
        return None
    return (
        "not created in Brevo: it has no contact with this email address, and would refuse "
        "to create one: the address is not an email by the rule of Brevo's API (names "
        "separated by single dots before the @; a domain of letters, digits and hyphens, "
        "with a dot)"
    )


def _checked(user: str) -> str:
    """``user``, when it can name one Brevo contact; PermanentError otherwise."""
    if problem := identifier_problem(user):
        raise _refused(problem)
    return user


def _refused(problem: str) -> PermanentError:
    return PermanentError(
        f"not sent to Brevo: the contact identifier (organization_user_id) cannot name "
        f"one contact: {problem}"
    )


def _contact_url(base: str, user: str) -> str:
    """The one URL of the contact ``user`` names: the identifier checked, and encoded as a
    single path segment ("/" included); its type always sent (without it Brevo guesses
    from the identifier's form)."""
    identifier_type = "email_id" if _EMAIL.fullmatch(user) else "ext_id"
    segment = quote(_checked(user), safe="")
    return f"{base}/contacts/{segment}?identifierType={identifier_type}"


def _options(config: Account) -> Options:
    if not isinstance(config.options, Options):
        raise TypeError(f"connector {config.id!r} is not a Brevo config")
    return config.options


def _fields(config: Account, change: Change) -> dict[str, Any]:
    """The update body of a change: ``attributes`` (Brevo's names are upper case) and the
    blocklist flags, each only when something sets it."""
    attributes = {name.upper(): value for name, value in own_fields(config, change.values).items()}
    return ({"attributes": attributes} if attributes else {}) | dict(change.fed)


def _headers(options: Options) -> dict[str, str]:
    return {
        "api-key": options.api_key.get_secret_value(),
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def _base_url(settings: ConnectorSettings) -> str:
    return settings.sendinblue_api_url.rstrip("/")


def _update_request(
    base: str, options: Options, user: str, fields: Mapping[str, Any]
) -> HttpRequest:
    return HttpRequest(
        method="PUT",
        url=_contact_url(base, user),
        headers=_headers(options),
        json=dict(fields),
    )


def _delete_request(base: str, options: Options, user: str) -> HttpRequest:
    return HttpRequest(method="DELETE", url=_contact_url(base, user), headers=_headers(options))


def _create_request(
    base: str, options: Options, user: str, fields: Mapping[str, Any]
) -> HttpRequest:
    body: dict[str, Any] = {"email" if _EMAIL.fullmatch(user) else "ext_id": user, **fields}
    if options.list_id is not None:
        body["listIds"] = [options.list_id]
    # A contact created meanwhile by someone else is then updated rather than an error.
    body["updateEnabled"] = True
    return HttpRequest(method="POST", url=f"{base}/contacts", headers=_headers(options), json=body)


def _batch_request(base: str, options: Options, call: Sequence[_Item]) -> HttpRequest:
    return HttpRequest(
        method="POST",
        url=f"{base}/contacts/batch",
        headers=_headers(options),
        json={"contacts": [item.body for item in call]},
    )


def _unknown_indexes(body: Any, count: int) -> set[int] | None:
    """The positions of the contacts a batch's 404 says Brevo does not know ("No contact
    found for indexes 3,4", zero-based), or None when it names none of the ``count``
    sent, or one outside them: then it cannot be told whom it is about."""
    message = body.get("message") if isinstance(body, dict) else None
    found = _UNKNOWN_INDEXES.search(message) if isinstance(message, str) else None
    if found is None:
        return None
    indexes = {int(number) for number in found[1].split(",")}
    return indexes if max(indexes) < count else None


def _contact_unknown(response: HttpResponse) -> bool:
    # Only Brevo's own "no such contact" counts: a 404 from a wrong base URL must not
    # quietly skip every change.
    return response.status == 404 and _code(response.body) == "document_not_found"


def _classify(
    response: HttpResponse,
    fields: Mapping[str, Any],
    options: Options,
    settings: ConnectorSettings,
) -> Delivered:
    """Brevo's answer as a result, or the error that says what to do about it."""
    status = response.status
    reason = _reason(response.body, options.api_key.get_secret_value())
    if status in (201, 204):
        return Delivered(status, fields)
    if 200 <= status < 300:
        raise RetryableError(
            f"Brevo answered HTTP {status} where 204 or 201 was expected, so the update is "
            f"not known to be applied: {reason}",
            status=status,
        )
    endpoint = f"the Brevo API URL setting ({_base_url(settings)})"
    retry_after = partial(_retry_after, response.headers, settings)
    if common := common_refusal("Brevo", response, reason, endpoint, retry_after):
        raise common
    if status in (401, 402, 403):
        problem = {
            401: "the API key is wrong or revoked",
            402: "the account has no credit left",
            403: "the API key is not permitted to update contacts",
        }[status]
        raise PermanentError(
            f"Brevo refused the update (HTTP {status}): {problem}; {reason}",
            status=status,
            operator_action=True,
        )
    if status == 404:
        # Not the contact (handled before): a list that does not exist, or a wrong base URL.
        raise PermanentError(
            f"Brevo answered HTTP 404: {reason}; check list_id and the Brevo API URL "
            f"setting ({_base_url(settings)})",
            status=status,
            operator_action=True,
        )
    raise PermanentError(f"Brevo refused the update (HTTP {status}): {reason}", status=status)


def _code(body: Any) -> str | None:
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _reason(body: Any, secret: str) -> str:
    """Brevo's code and message, short, and without the key should Brevo ever echo it."""
    return answer_reason(body, [secret], lambda b: f"{_code(b) or 'no code'}: {b['message']}")


def _retry_after(headers: Mapping[str, str], settings: ConnectorSettings) -> float | None:
    """Seconds until ``x-sib-ratelimit-reset`` says the window resets, within
    [0, rate_limit_max_wait]."""
    seconds = _reset_in(headers)
    return None if seconds is None else min(seconds, settings.rate_limit_max_wait)


def _reset_in(headers: Mapping[str, str]) -> float | None:
    # A relative value in seconds; some answers give milliseconds (docs/vendors.md#brevo).
    seconds = header_number(headers, "x-sib-ratelimit-reset")
    if seconds is None:
        return None
    if seconds > _LONGEST_WINDOW:
        seconds /= 1000
    return max(seconds, 0.0)
