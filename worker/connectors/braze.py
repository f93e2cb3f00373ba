"""Braze: ``POST {server}/users/track`` calls of up to ``braze_batch_size`` attributes
objects (the connector's settings), one per change and so one per user, whose
``external_id`` is the PMP's ``organization_user_id``.

How a mapping id becomes a field of that object (docs/mappings.md#braze):

- ``OPTED_IN``: true gives ``email_subscribe: "opted_in"``, false ``"unsubscribed"``;
- ``UNSUBSCRIBED``: true gives ``"unsubscribed"``, false ``"subscribed"``. When both yield a
  state, ``unsubscribed`` beats ``opted_in``, which beats ``subscribed``: any refusal wins;
- ``PUSH_OPTED_IN`` and ``PUSH_UNSUBSCRIBED`` feed ``push_subscribe`` the same way;
- a subscription group id gives an entry of ``subscription_groups``. Braze's group ids are
  UUIDs, so an id is a group exactly when it is a UUID written 8-4-4-4-12 in hex digits (any
  case, any version); every other id stays a custom attribute;
- anything else is a custom attribute of that name, set to the value as it is.

The subscription fields are ``Feed``s (worker.connectors.base): computed by the delivery
from the person's whole current state, so this module only places them in the object.
The mapping ids compare case-insensitively: ``opted_in`` written in a config must not
quietly become a custom attribute while the person's email state stays as it was.

A mapping id naming a Braze identifier or standard subscription field (``email``,
``push_subscribe``, ``subscription_group_id``... in any case) is refused when the config is
stored, with the mapping id to use instead.

A change with nothing to write is skipped.

Erasures (``on_user_deleted``, docs/erasure.md): ``unsubscribe`` is an attributes object
like any other, with every mapped subscription refused and ``_update_existing_only`` true
whatever the upsert mode (an erasure never creates the person); ``delete`` goes to
``POST {server}/users/delete`` in calls of up to 50 ``external_ids``, which the deliverer
paces on a bucket of their own (``erasure_rate``: Braze limits /users/delete apart from
/users/track). Braze answers with the count of ids it queued; one it does not know is not
counted, which is no error: deleting what is gone is done. A 401/403 there names the
``users.delete`` permission the key needs.

Each change gets its own answer from a call's answer (docs/vendors.md): a 201 "success" delivers
every object but those its ``errors`` list, which are refused; a 413 or a 400 splits a call
of several users in halves, until the object at fault is alone; any other refusal of the
whole call refuses each of its objects; a rate limit (Braze's or
our pacing's), an outage or a network error ends the batch, leaving that call's changes and
every later one to retry.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationInfo, field_validator

from worker.connectors.base import (
    Account,
    Answer,
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
    answer_in_calls,
    answer_reason,
    common_refusal,
    feeds,
    header_number,
    own_fields,
)
from worker.core.errors import Deferred, DeliveryError, PermanentError, RetryableError
from worker.core.outcomes import SkipReason


class Instance(NamedTuple):
    name: str
    rest: str
    dashboard: str
    sdk: str


# braze.com/docs/api/basics#endpoints ("API and SDK endpoints"). There is no US-09.
INSTANCES: tuple[Instance, ...] = (
    Instance("US-01", "rest.iad-01.braze.com", "dashboard-01.braze.com", "sdk.iad-01.braze.com"),
    Instance("US-02", "rest.iad-02.braze.com", "dashboard-02.braze.com", "sdk.iad-02.braze.com"),
    Instance("US-03", "rest.iad-03.braze.com", "dashboard-03.braze.com", "sdk.iad-03.braze.com"),
    Instance("US-04", "rest.iad-04.braze.com", "dashboard-04.braze.com", "sdk.iad-04.braze.com"),
    Instance("US-05", "rest.iad-05.braze.com", "dashboard-05.braze.com", "sdk.iad-05.braze.com"),
    Instance("US-06", "rest.iad-06.braze.com", "dashboard-06.braze.com", "sdk.iad-06.braze.com"),
    Instance("US-07", "rest.iad-07.braze.com", "dashboard-07.braze.com", "sdk.iad-07.braze.com"),
    Instance("US-08", "rest.iad-08.braze.com", "dashboard-08.braze.com", "sdk.iad-08.braze.com"),
    Instance("US-10", "rest.us-10.braze.com", "dashboard.us-10.braze.com", "sdk.us-10.braze.com"),
    Instance("EU-01", "rest.fra-01.braze.eu", "dashboard-01.braze.eu", "sdk.fra-01.braze.eu"),
    Instance("EU-02", "rest.fra-02.braze.eu", "dashboard-02.braze.eu", "sdk.fra-02.braze.eu"),
    Instance("AU-01", "rest.au-01.braze.com", "dashboard.au-01.braze.com", "sdk.au-01.braze.com"),
    Instance("ID-01", "rest.id-01.braze.com", "dashboard.id-01.braze.com", "sdk.id-01.braze.com"),
    Instance("JP-01", "rest.jp-01.braze.com", "dashboard.jp-01.braze.com", "sdk.jp-01.braze.com"),
    Instance("KR-01", "rest.kr-01.braze.com", "dashboard.kr-01.braze.com", "sdk.kr-01.braze.com"),
)
_BY_NAME = {instance.name: instance for instance in INSTANCES}
_REST_HOSTS = frozenset(instance.rest for instance in INSTANCES)
_DASHBOARDS = {instance.dashboard: instance for instance in INSTANCES}
_SDK_ENDPOINTS = {instance.sdk: instance for instance in INSTANCES}
# SDK hosts of older SDK versions, which name no instance.
_LEGACY_SDK_HOSTS = frozenset({"sondheim.braze.com", "sondheim.appboy.com"})
_INSTANCE_NAME = re.compile(r"[A-Z]{2}-\d{2}")
_EXAMPLE = "such as https://rest.iad-01.braze.com or its instance name such as US-01"

_SUBSCRIPTION_GROUP = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)
# Strongest first: any refusal wins over any consent.
_EMAIL_STATES = ("unsubscribed", "opted_in", "subscribed")
_GROUP_STATES = ("unsubscribed", "subscribed")
_STATE_FEEDS = {
    "OPTED_IN": Feed("email_subscribe", "opted_in", "unsubscribed", _EMAIL_STATES),
    "UNSUBSCRIBED": Feed("email_subscribe", "unsubscribed", "subscribed", _EMAIL_STATES),
    "PUSH_OPTED_IN": Feed("push_subscribe", "opted_in", "unsubscribed", _EMAIL_STATES),
    "PUSH_UNSUBSCRIBED": Feed("push_subscribe", "unsubscribed", "subscribed", _EMAIL_STATES),
}
_STATE_FIELDS = frozenset(feed.field for feed in _STATE_FEEDS.values())
_EMAIL_HINT = "map OPTED_IN or UNSUBSCRIBED to change the email subscription state"
_PUSH_HINT = "map PUSH_OPTED_IN or PUSH_UNSUBSCRIBED to change the push subscription state"
_GROUP_HINT = "use the subscription group's id (its UUID) as the mapping id"
_USER_HINT = "it identifies the Braze user, and a mapping must not change who is updated"
#: Mapping ids (lower case) that name a Braze identifier, a standard subscription field or
#: a key of the attributes object this connector sets itself, with what to map instead
#: (docs/vendors.md#braze): as custom attributes they would send Braze what it refuses (a boolean
#: push_subscribe) or overwrite what identifies the person (email).
_RESERVED = {
    "external_id": _USER_HINT,
    "braze_id": _USER_HINT,
    "user_alias": _USER_HINT,
    "email": f"{_USER_HINT} (it is the address itself); {_EMAIL_HINT}",
    "phone": f"{_USER_HINT} (it is the number itself); for SMS consent, {_GROUP_HINT}",
    "email_subscribe": f"it is set by the connector; {_EMAIL_HINT}",
    "push_subscribe": f"it is set by the connector; {_PUSH_HINT}",
    "subscription_groups": f"it is set by the connector; {_GROUP_HINT}",
    "subscription_group_id": _GROUP_HINT,
    "_update_existing_only": "it is set by the connector from upsert_mode",
    "_merge_objects": "it is an option of the call, not a field of the user",
    "alias_name": f"{_USER_HINT} (with alias_label, it is a user alias)",
    "alias_label": f"{_USER_HINT} (with alias_name, it is a user alias)",
    "push_token_import": "it is an option of the call (an anonymous push token import)",
}
#: Braze profile fields of a fixed type or format (braze.com/docs/api/objects_filters/
#: user_attributes_object, "Braze user profile fields"), with what they hold: a consent's
#: true/false or a preference's text is none of these, and Braze refuses, nulls or misreads
#: it (a consent's true in email_open_tracking_disabled would switch tracking off).
#: first_name, last_name and home_city hold any text and stay usable.
_TYPED_FIELDS = {
    "country": "an ISO-3166-1 alpha-2 country code (Braze sets anything else to null)",
    "current_location": "a longitude and latitude object",
    "date_of_first_session": "a date",
    "date_of_last_session": "a date",
    "dob": "a date of birth, YYYY-MM-DD",
    "email_click_tracking_disabled": "true to stop click tracking: the opposite of a consent",
    "email_open_tracking_disabled": "true to stop open tracking: the opposite of a consent",
    "facebook": "a Facebook profile object",
    "gender": "one of M, F, O, N or P",
    "language": "an ISO-639-1 language code",
    "marked_email_as_spam_at": "a date",
    "push_tokens": "a list of app_id and token objects",
    "time_zone": "an IANA time zone name",
    "twitter": "an X (Twitter) profile object",
}
_RESERVED |= {
    name: f"it is a Braze profile field holding {holds}, which a consent or preference value "
    f"is not; to keep the value in Braze, map a custom attribute of another name, such as "
    f"'pmp_{name}'"
    for name, holds in _TYPED_FIELDS.items()
}
#: Answers to a call of several users that split it in halves (docs/choices.md).
_SPLIT = frozenset({400, 413})
DELETE_BATCH = 50  # external_ids per /users/delete call (docs/vendors.md#braze)
EXPORT_BATCH = 50  # external_ids per /users/export/ids and /subscription/status/get call
_EXPORTED = ("external_id", "email_subscribe", "push_subscribe", "custom_attributes")


def rest_endpoint(server: str, allow_hosts: Collection[str] = ()) -> str:
    """The Braze REST endpoint ``server`` names, as ``https://host``; ValueError otherwise.

    Accepted: an endpoint of ``INSTANCES`` (https only, nothing after the host but one
    ``/``, host in any case), its bare host, or its instance name. ``allow_hosts``
    (``host:port`` entries, lower case) also lets ``http(s)://host:port`` through, for local
    stacks and tests. Everything else is refused: a server URL is where the API key is sent.
    """
    text = server.strip()
    if _INSTANCE_NAME.fullmatch(text.upper()):
        instance = _BY_NAME.get(text.upper())
        if instance is None:
            raise ValueError(f"unknown Braze instance {text!r} (known: {', '.join(_BY_NAME)})")
        return f"https://{instance.rest}"
    if "://" not in text:
        return _bare_host(text)

    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"must be an https:// URL, not {scheme}://")
    if "@" in parts.netloc:
        raise ValueError("must not contain user info (a name@ before the host)")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    extra = parts.path not in ("", "/") or "?" in text or "#" in text
    if port is not None and f"{host}:{port}" in allow_hosts:
        if extra:
            raise ValueError("must not have a path, query or fragment")
        return f"{scheme}://{host}:{port}"

    _refuse_other_braze_host(host)
    if port is not None and (scheme != "https" or host not in _REST_HOSTS):
        # A local stack's look-alike, most likely: the setting that lets one through.
        raise ValueError(
            f"must use https:// and must not name a port, unless PREFSYNC_ALLOW_HOSTS lists "
            f"{host}:{port} (set it for the prefsync command and the worker alike)"
        )
    if scheme != "https":
        raise ValueError(
            "must use https:// (only a host:port listed in PREFSYNC_ALLOW_HOSTS may use http://)"
        )
    if port is not None:
        raise ValueError("must not name a port")
    if extra:
        raise ValueError(f"must be the endpoint alone, without path, query or fragment, {_EXAMPLE}")
    return _known_host(host)


def _bare_host(text: str) -> str:
    host = text.lower().removesuffix("/")
    _refuse_other_braze_host(host)
    if any(char in host for char in "/:@?#"):
        raise ValueError(f"must be a Braze REST endpoint {_EXAMPLE}")
    return _known_host(host)


def _refuse_other_braze_host(host: str) -> None:
    """People paste the dashboard URL they log in to, or the SDK endpoint of their app."""
    if instance := _DASHBOARDS.get(host):
        raise ValueError(
            f"{host} is the {instance.name} dashboard, not the REST API: "
            f"use https://{instance.rest}"
        )
    if instance := _SDK_ENDPOINTS.get(host):
        raise ValueError(
            f"{host} is the {instance.name} SDK endpoint, not the REST API: "
            f"use https://{instance.rest}"
        )
    if host in _LEGACY_SDK_HOSTS or host.startswith(("sdk.", "dashboard.", "dashboard-")):
        raise ValueError(
            f"{host} is not the REST API: use the REST endpoint shown next to your API keys "
            f"(Settings > APIs and Identifiers), {_EXAMPLE}"
        )


def _known_host(host: str) -> str:
    if host in _REST_HOSTS:
        return f"https://{host}"
    if host.endswith("."):
        raise ValueError("must not end with a dot")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host} is not a Braze REST endpoint; use yours, {_EXAMPLE}") from None
    raise ValueError(f"must be a Braze REST endpoint, not an IP address; use yours, {_EXAMPLE}")


class Options(BaseModel):
    """Credentials and destination of one Braze workspace."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    api_key: SecretStr
    server: str

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

    @field_validator("server")
    @classmethod
    def _rest_endpoint(cls, server: str, info: ValidationInfo) -> str:
        return rest_endpoint(server, (info.context or {}).get("allow_hosts", ()))


def signal_instructions(url: str, authorization: str, groups: Sequence[str]) -> str:
    """What an operator sets up in Braze so that a person's unsubscribe there reaches
    ``url`` (the connector's signals route), with the ``Authorization`` header value given:
    a webhook campaign per subscription state, its exact body (Braze Liquid), and the
    Currents alternative."""
    templates = [
        (
            "Update Subscription Status (email)",
            {"email_subscribe": "{{subscribed_state.${email_global}}}"},
        ),
        *(
            (
                f"Update Subscription Group Status ({group})",
                {
                    "subscription_group_id": group,
                    "subscription_state": f"{{{{subscribed_state.${{{group}}}}}}}",
                },
            )
            for group in groups
        ),
    ]
    lines = [
        "Braze: one webhook campaign per trigger below (Messaging > Campaigns > Webhook):",
        "  1. Delivery: action-based, on the trigger named; for a group, filter the",
        '     trigger to exclude the "REST API" source (that is prefsync\'s own write).',
        "  2. Re-eligibility: ON, after 0 minutes (off by default: a person's second",
        "     change would then be lost).",
        "  3. Webhook URL, method POST, these request headers, and the body shown.",
        "",
        f"Webhook URL:  {url}",
        f"Header:       Authorization: {authorization}",
        "Header:       Content-Type: application/json",
    ]
    for trigger, fields in templates:
        body = {
            "external_id": "{{${user_id}}}",
            **fields,
            "changed_at": "{{ 'now' | date: '%Y-%m-%dT%H:%M:%SZ' }}",
        }
        lines += ["", f"Trigger: {trigger}", "Body:", json.dumps(body, indent=2)]
    lines += [
        "",
        "Or Braze Currents: a custom HTTP connector to the same URL sending subscription",
        "events (users.behaviors.subscription.GlobalStateChange,",
        "users.behaviors.subscriptiongroup.StateChange) with a bearer token from",
        "/oauth/token. Such a token expires (PREFSYNC_INGRESS_TOKEN_TTL) and Currents sends",
        "a fixed one: prefer the webhook campaigns.",
        "Braze retries a failed webhook up to 5 times in 30 minutes and waits 90 s for an",
        "answer.",
    ]
    return "\n".join(lines)


class BrazeConnector(Connector):
    type_id = "braze"
    options_model = Options
    # /users/track: 3,000 calls per 3 s per workspace (docs/vendors.md#braze).
    default_rate = 1000.0
    # /users/delete: 20,000 calls a minute, shared with /users/alias/new and
    # /users/identify (docs/vendors.md#braze), apart from /users/track's.
    erasure_rate = 20000 / 60

    # /users/export/ids: 250 calls a minute on workspaces made since August 2024, the
    # lowest Braze documents (docs/vendors.md#braze).
    read_rate = 250 / 60
    read_batch = EXPORT_BATCH
    no_decision = {"email_subscribe": "subscribed", "push_subscribe": "subscribed"}

    @property
    def batch_size(self) -> int:
        return self.settings.braze_batch_size

    @property
    def delivery_mode(self) -> str:
        return f"batches of up to {self.batch_size} users per POST /users/track call"

    def quota(self, headers: Mapping[str, str]) -> Quota | None:
        remaining = header_number(headers, "x-ratelimit-remaining")
        reset = header_number(headers, "x-ratelimit-reset")
        if remaining is None or reset is None:
            return None
        limit = header_number(headers, "x-ratelimit-limit")
        return Quota(
            int(limit) if limit else None, int(remaining), max(reset - self.settings.clock(), 0.0)
        )

    keywords = tuple(_STATE_FEEDS)

    def mapping_problem(self, mapping_id: str) -> str | None:
        hint = _RESERVED.get(mapping_id.lower())
        if hint is None:
            return None
        return f"{mapping_id!r} is reserved by Braze and never a custom attribute: {hint}"

    def feed(self, mapping_id: str) -> Feed | None:
        kind = mapping_id.upper()
        if kind in _STATE_FEEDS:
            return _STATE_FEEDS[kind]
        if _SUBSCRIPTION_GROUP.fullmatch(mapping_id):
            return Feed(mapping_id, "subscribed", "unsubscribed", _GROUP_STATES)
        return None

    def requests(self, config: Account, change: Change) -> list[HttpRequest]:
        if change.erase == "delete":
            return [_delete_request(config, [change.user])]
        fields = _fields(config, change)
        return (
            [_track_request(config, [_attributes(config, change.user, fields, change.erase)])]
            if fields
            else []
        )

    def deliver(self, transport: BaseTransport, config: Account, change: Change) -> Result:
        many = self.deliver_erasures if change.erase == "delete" else self.deliver_many
        (answer,) = many(transport, config, [change])
        if isinstance(answer, DeliveryError | Deferred):
            raise answer
        return answer

    def deliver_erasures(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        """``POST /users/delete`` calls of up to 50 ``external_ids`` (Braze's cap, and
        ``braze_batch_size`` when lower). A call Braze refuses as a whole (400, 413) is
        split in halves first: one id it cannot take must not cost 49 erasures."""
        size = min(self.settings.braze_batch_size, DELETE_BATCH)
        return answer_in_calls(
            [change.user for change in changes],
            size,
            lambda users: _send_deletion(transport, config, users, self.settings),
        )

    def deliver_many(
        self, transport: BaseTransport, config: Account, changes: Sequence[Change]
    ) -> list[Answer]:
        answers: dict[int, Answer] = {}
        updates: list[_Update] = []
        for position, change in enumerate(changes):
            fields = _fields(config, change)
            if fields:
                attributes = _attributes(config, change.user, fields, change.erase)
                updates.append(_Update(position, attributes, fields))
            else:
                answers[position] = Skipped(SkipReason.NO_MAPPED_VALUES, "no mapping has a value")

        # Braze (or our pacing) taking no calls for now ends the batch: later calls would
        # fare no better, so they wait for the retry with this one.
        sent = answer_in_calls(
            updates,
            self.settings.braze_batch_size,
            lambda call: _send(transport, config, call, self.settings),
        )
        for update, answer in zip(updates, sent, strict=True):
            answers[update.position] = answer
        return [answers[position] for position in range(len(changes))]

    def written_fields(self, config: Account, change: Change) -> dict[str, Any]:
        fields = _fields(config, change)
        groups = fields.pop("subscription_groups", [])
        return fields | {g["subscription_group_id"]: g["subscription_state"] for g in groups}

    def effective(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        # A global email unsubscribe outranks every subscription group: Braze sends the
        # person no email whatever a group says.
        if fields.get("email_subscribe") != "unsubscribed":
            return dict(fields)
        return {
            name: "unsubscribed" if _SUBSCRIPTION_GROUP.fullmatch(name) else value
            for name, value in fields.items()
        }

    def read(
        self, transport: BaseTransport, config: Account, users: Sequence[str]
    ) -> dict[str, dict[str, Any] | None]:
        """``POST /users/export/ids`` for the profiles, then ``GET
        /subscription/status/get`` per subscription group the config maps, for the users
        Braze knows. A group's state is lower-cased: ``subscribed``, ``unsubscribed`` or
        ``unknown``."""
        options = _options(config)
        body = {"external_ids": list(users), "fields_to_export": list(_EXPORTED)}
        export = _post(config, "/users/export/ids", body)
        exported = _read(transport, export, options, self.settings)
        held: dict[str, dict[str, Any]] = {}
        for profile in exported.get("users") or []:
            if not isinstance(profile, dict) or not isinstance(profile.get("external_id"), str):
                continue
            fields = {name: profile.get(name) for name in ("email_subscribe", "push_subscribe")}
            custom = profile.get("custom_attributes")
            held[profile["external_id"]] = (custom if isinstance(custom, dict) else {}) | fields
        known = [user for user in users if user in held]
        groups = [m.id for m, feed in feeds(config) if feed is not None and feed.field == m.id]
        for group in dict.fromkeys(groups) if known else ():
            query = urlencode(
                [("subscription_group_id", group), *(("external_id[]", user) for user in known)]
            )
            url = f"{options.server}/subscription/status/get?{query}"
            request = HttpRequest("GET", url, _headers(options))
            status = _read(transport, request, options, self.settings).get("status")
            states = status if isinstance(status, dict) else {}
            for user in known:
                held[user][group] = str(states.get(user, "unknown")).lower()
        return {user: held.get(user) for user in users}


@dataclass(frozen=True, slots=True)
class _Update:
    """One change as it goes to Braze: where its answer goes among the changes, the
    attributes object sent, and the fields it writes (for the result)."""

    position: int
    attributes: dict[str, Any]
    fields: dict[str, Any]


def _options(config: Account) -> Options:
    if not isinstance(config.options, Options):
        raise TypeError(f"connector {config.id!r} is not a Braze config")
    return config.options


def _fields(config: Account, change: Change) -> dict[str, Any]:
    """The Braze fields of a change, without the user's identifier."""
    fields: dict[str, Any] = {}
    groups: list[dict[str, str]] = []
    for name, state in change.fed.items():
        if name in _STATE_FIELDS:
            fields[name] = state
        else:
            groups.append({"subscription_group_id": name, "subscription_state": state})
    if groups:
        fields["subscription_groups"] = groups
    fields.update(own_fields(config, change.values))
    return fields


def _attributes(
    config: Account, user: str, fields: Mapping[str, Any], erase: str | None = None
) -> dict[str, Any]:
    return {
        "external_id": user,
        # Braze creates unknown users unless told otherwise; an erasure never creates one.
        "_update_existing_only": not config.upsert_mode or erase is not None,
        **fields,
    }


def _track_request(config: Account, objects: Sequence[Mapping[str, Any]]) -> HttpRequest:
    return _post(config, "/users/track", {"attributes": list(objects)})


def _delete_request(config: Account, users: Sequence[str]) -> HttpRequest:
    return _post(config, "/users/delete", {"external_ids": list(users)})


def _post(config: Account, path: str, body: Mapping[str, Any]) -> HttpRequest:
    options = _options(config)
    return HttpRequest(
        method="POST", url=f"{options.server}{path}", headers=_headers(options), json=dict(body)
    )


def _headers(options: Options) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {options.api_key.get_secret_value()}",
        "Content-Type": "application/json",
    }


def _read(
    transport: BaseTransport, request: HttpRequest, options: Options, settings: ConnectorSettings
) -> dict[str, Any]:
    """The JSON object Braze answered a read with; raises as a delivery's answer does."""
    response = transport.send(request)
    if response.status == 200 and isinstance(response.body, dict):
        return response.body
    if response.status in (401, 403):
        raise PermanentError(
            f"Braze refused the read (HTTP {response.status}): the API key lacks the "
            f"users.export.ids or subscription.status.get permission (or is wrong, revoked, "
            f"or for another instance than {options.server})",
            status=response.status,
            operator_action=True,
        )
    if 200 <= response.status < 300:
        raise RetryableError(f"Braze answered a read with HTTP {response.status} and no object")
    raise _refusal(response, options, settings)


def _send_deletion(
    transport: BaseTransport, config: Account, users: Sequence[str], settings: ConnectorSettings
) -> list[Answer] | None:
    """One /users/delete call and an answer per user of it, or None when Braze refused
    it as a whole and it can be split. Braze counts the ids it queued for deletion; one it
    does not know is simply not counted: deleting what is gone is done. Raises
    ``RetryableError`` or ``Deferred`` when Braze takes no calls."""
    response = transport.send(_delete_request(config, users))
    if response.status in (400, 413) and len(users) > 1:
        return None
    options = _options(config)
    secret = options.api_key.get_secret_value()
    body = response.body
    if 200 <= response.status < 300:
        queued = isinstance(body, dict) and (
            body.get("message") == "success" or isinstance(body.get("deleted"), int)
        )
        if not queued:
            raise RetryableError(
                f"Braze answered HTTP {response.status} to /users/delete without a count or a "
                f"success message, so the deletion is not known to be queued: "
                f"{_reason(body, secret)}",
                status=response.status,
            )
        return [Delivered(response.status, {"deleted": True})] * len(users)
    if response.status in (401, 403):
        error: DeliveryError = PermanentError(
            f"Braze refused the deletion (HTTP {response.status}): the API key lacks the "
            f"users.delete permission (or is wrong, revoked, or for another instance than "
            f"{options.server}); {_reason(body, secret)}",
            status=response.status,
            operator_action=True,
        )
    else:
        error = _refusal(response, options, settings)
    if isinstance(error, RetryableError):
        raise error
    return [error] * len(users)


def _send(
    transport: BaseTransport, config: Account, call: Sequence[_Update], settings: ConnectorSettings
) -> list[Answer] | None:
    """One /users/track call and an answer per object of it, or None when the call is to be
    split. Raises ``RetryableError`` or ``Deferred`` when Braze takes no calls for now."""
    response = transport.send(_track_request(config, [update.attributes for update in call]))
    # Too large (413), or refused whole (400) for what may be one malformed object or too
    # many objects: halves are tried until the object at fault is alone, so that only its
    # user is refused, never the 49 others of its call.
    if response.status in _SPLIT and len(call) > 1:
        return None
    options = _options(config)
    if 200 <= response.status < 300:
        return _accepted(response, [update.fields for update in call], options)
    error = _refusal(response, options, settings)
    if isinstance(error, RetryableError):
        raise error
    return [error] * len(call)


def _accepted(
    response: HttpResponse, fields: Sequence[dict[str, Any]], options: Options
) -> list[Answer]:
    """The answer of each object of a call Braze answered with a 2xx."""
    status = response.status
    body = response.body
    secret = options.api_key.get_secret_value()
    if not isinstance(body, dict) or body.get("message") != "success":
        # Only "success" says the update was queued; anything else is not proof of it.
        unknown = RetryableError(
            f"Braze answered HTTP {status} without a success message, so the update is "
            f"not known to be applied: {_reason(body, secret)}",
            status=status,
        )
        return [unknown] * len(fields)
    refused = _refused_objects(body.get("errors") or [], len(fields))
    if refused is None:
        # Braze refused something this call cannot tell apart, so no object of it is known
        # to be applied. A retry sends them again, which is harmless (it sets the same
        # state); calling them delivered could leave a person's refusal unapplied.
        unknown = RetryableError(
            f"Braze answered HTTP {status} with errors that name no object of the call, so "
            f"which updates were applied is unknown: {_reason(body, secret)}",
            status=status,
        )
        return [unknown] * len(fields)
    reasons = {index: _reason("; ".join(types), secret) for index, types in refused.items()}
    return [
        PermanentError(
            f"Braze took the call (HTTP {status} success) but refused this user's update: "
            f"{reasons[index]}",
            status=status,
        )
        if index in reasons
        else Delivered(status, object_fields)
        for index, object_fields in enumerate(fields)
    ]


def _refused_objects(errors: Any, count: int) -> dict[int, list[str]] | None:
    """Braze's error types by the index of the attributes object they refuse, or None when
    an error names no object among the ``count`` sent."""
    if not isinstance(errors, list):
        return None
    refused: dict[int, list[str]] = {}
    for error in errors:
        if not isinstance(error, dict):
            return None
        if error.get("input_array") not in (None, "attributes"):
            continue  # about an array this connector never sends
        index = error.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count:
            return None
        refused.setdefault(index, []).append(str(error.get("type", "no reason given")))
    return refused


def _refusal(
    response: HttpResponse, options: Options, settings: ConnectorSettings
) -> DeliveryError:
    """What a non-2xx answer from Braze means for every object of the call."""
    status = response.status
    reason = _reason(response.body, options.api_key.get_secret_value())
    endpoint = f"that {options.server} is still the workspace's REST endpoint"
    retry_after = partial(_retry_after, response.headers, settings)
    if common := common_refusal("Braze", response, reason, endpoint, retry_after):
        return common
    if status in (401, 403):
        return PermanentError(
            f"Braze refused the credentials (HTTP {status}): the API key is wrong or revoked, "
            f"belongs to another instance than {options.server}, or lacks the users.track "
            f"permission; {reason}",
            status=status,
            operator_action=True,
        )
    if status == 413:
        return PermanentError(
            "Braze found the request too large (HTTP 413), and one user's update cannot be "
            f"split further: {reason}",
            status=status,
        )
    return PermanentError(f"Braze refused the update (HTTP {status}): {reason}", status=status)


def _reason(body: Any, secret: str) -> str:
    """Braze's explanation, short, and without the key should Braze ever echo it."""
    return answer_reason(body, [secret], _braze_message)


def _braze_message(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    return body["message"] + (f" {json.dumps(errors, ensure_ascii=False)}" if errors else "")


def _retry_after(headers: Mapping[str, str], settings: ConnectorSettings) -> float | None:
    """Seconds until ``X-RateLimit-Reset`` (epoch seconds), within [0, rate_limit_max_wait]."""
    reset = header_number(headers, "x-ratelimit-reset")
    if reset is None:
        return None
    return min(max(reset - settings.clock(), 0.0), settings.rate_limit_max_wait)
