"""Brevo (formerly Sendinblue): one ``PUT {base}/contacts/{identifier}`` per change and, in
upsert mode, a ``POST {base}/contacts`` that creates the contact Brevo did not know.

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
is refused (dead-lettered) for this connector. The base URL is the connector's setting
(``sendinblue_api_url``), so tests and local stacks can point it elsewhere.

Erasures (``on_user_deleted``, docs/erasure.md): ``unsubscribe`` is the update with
``emailBlacklisted`` (and ``smsBlacklisted`` when an SMS mapping exists) true and no
attribute, never followed by a create (an unknown contact is skipped); ``delete`` is
``DELETE {base}/contacts/{identifier}?identifierType=...``: 204 done, 404
``document_not_found`` already gone (skipped, ``contact_unknown``). Deletions count
against the same contact-call limit as updates, so they share the account's pacing.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
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
    BaseTransport,
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
    header,
    header_number,
    own_fields,
)
from worker.core.errors import PermanentError, RetryableError
from worker.core.masking import mask
from worker.core.outcomes import SkipReason

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
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
_REASON_LENGTH = 300


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


#: the marketing events a bidirectional connector's webhook sends (docs/two-way.md)
SIGNAL_EVENTS = ("unsubscribed", "spam")


class SendinblueConnector(Connector):
    type_id = "sendinblue"
    aliases = ("brevo",)
    options_model = Options
    # Contact calls: 10 per second per account on every plan (docs/vendors.md#brevo).
    default_rate = 10.0

    def quota(self, headers: Mapping[str, str]) -> Quota | None:
        remaining = header_number(headers, "x-sib-ratelimit-remaining")
        reset_in = _reset_in(headers)
        if remaining is None or reset_in is None:
            return None
        limit = header_number(headers, "x-sib-ratelimit-limit")
        return Quota(int(limit) if limit else None, int(remaining), reset_in)

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
        if config.upsert_mode and change.erase is None:
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
            response = transport.send(_create_request(base, options, user, fields))
        return _classify(response, fields, options, self.settings)

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


def _checked(user: str) -> str:
    """``user``, when it can name one Brevo contact; PermanentError otherwise."""
    if problem := identifier_problem(user):
        raise PermanentError(
            f"not sent to Brevo: the contact identifier (organization_user_id) cannot name "
            f"one contact: {problem}"
        )
    return user


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
    if 300 <= status < 400:
        location = header(response.headers, "location") or "nowhere"
        raise PermanentError(
            f"Brevo answered HTTP {status}, a redirect to {location}, which is not followed: "
            f"check the Brevo API URL setting ({_base_url(settings)}); {reason}",
            status=status,
            operator_action=True,
        )
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
    if status == 429:
        raise RetryableError(
            f"Brevo rate limit reached (HTTP 429): {reason}",
            status=status,
            retry_after=_retry_after(response.headers, settings),
        )
    if status in (408, 425) or status >= 500:
        raise RetryableError(f"Brevo is unavailable (HTTP {status}): {reason}", status=status)
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
    if body is None:
        text = "no body"
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        text = f"{_code(body) or 'no code'}: {body['message']}"
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, ensure_ascii=False)
    text = text.replace(secret, mask(secret))
    return text if len(text) <= _REASON_LENGTH else text[:_REASON_LENGTH] + "…"


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
