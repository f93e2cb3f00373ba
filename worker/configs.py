"""Connector configs: the two shapes tenants send, the one frozen model they become, and the
per-tenant store in Redis.

Tenants arrive with either generation of the vendor's config shape
(docs/reference/connectors.md)::

    newer: {"type_id", "authentication": {...}, "properties": {...}, "mappings": [...]}
    older: {"type_id", "config": {credentials and options..., "properties": [mappings]}}

both with an optional ``upsert_mode`` and ``on_user_deleted`` at the top level, plus our own
optional ``id``, ``enabled`` and ``regulations``. Nothing here knows a destination: the
connector registered for the ``type_id`` (worker.connectors) validates its own options
(``options_model``, fed the newer shape's ``authentication`` and ``properties`` merged, or
the older shape's ``config`` without its mapping list) and says which mapping ids it cannot
take.

Every problem is reported at once, one line each, naming the field the way the config
wrote it (``authentication.server: ...``, ``config.properties[2].value: ...``). A missing
option of the newer shape is reported under ``authentication``: the required options are
the credentials.

A config is stored in the newer shape (every ``SecretStr`` option under
``authentication``, the other options under ``properties``), and validated again whenever
it is read, so a config a later release no longer accepts fails loudly, naming itself.
"""

from __future__ import annotations

import builtins
import json
import re
import string
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from redis.exceptions import WatchError

from worker.connectors import CONNECTORS, KNOWN_TYPE_IDS, get_connector
from worker.connectors.base import Connector, mask
from worker.errors import InvalidConfig
from worker.events import PROPERTY_SHAPES, is_property_name, is_utf8
from worker.sealing import Sealer, SealingError

if TYPE_CHECKING:
    from redis import Redis

KEY_PREFIX = "prefsync:connectors:"

_TOP_LEVEL_KEYS = frozenset(
    {
        "id",
        "type_id",
        "enabled",
        "upsert_mode",
        "on_user_deleted",
        "regulations",
        "authentication",
        "properties",
        "mappings",
        "config",
    }
)
_NEWER_SHAPE_KEYS = ("authentication", "properties", "mappings")
_ID_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_.-")


class Mapping(BaseModel):
    """``id`` names the destination field or state, ``value`` the PMP property (events.md)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1)
    value: str = Field(min_length=1)


Regulation = Annotated[str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1)]


class _Common(BaseModel):
    """The fields of every config whatever its destination; ``parse_config`` checks them
    apart from the options and mappings so that every problem is reported at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: unique in the tenant; defaults to the canonical type_id
    id: str
    enabled: bool = True
    #: create the user/contact when the destination does not know it
    upsert_mode: bool = False
    #: what a user.deleted does: nothing (skipped), refuse every mapped subscription, or
    #: delete the person in the destination (docs/erasure.md)
    on_user_deleted: Literal["ignore", "unsubscribe", "delete"] = "ignore"
    #: lower case; empty means every regulation
    regulations: tuple[Regulation, ...] = ()

    @field_validator("id")
    @classmethod
    def _id_characters(cls, value: str) -> str:
        if not 1 <= len(value) <= 64 or not set(value) <= _ID_CHARACTERS:
            raise ValueError("must be 1 to 64 characters among letters, digits, '_', '.', '-'")
        return value

    @field_validator("regulations")
    @classmethod
    def _distinct(cls, regulations: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(regulations))


class ConnectorConfig(_Common):
    """One destination account of a tenant. Build it with ``parse_config``."""

    #: canonical (an alias such as "brevo" is resolved)
    type_id: str
    mappings: tuple[Mapping, ...]
    #: the connector's ``options_model`` instance: credentials and destination options
    options: BaseModel

    @model_validator(mode="after")
    def _fits_connector(self) -> ConnectorConfig:
        if self.type_id not in CONNECTORS:
            raise ValueError(f"type_id {self.type_id!r} is not a registered connector")
        if not isinstance(self.options, self.connector.options_model):
            raise ValueError(f"options are not {self.type_id} options")
        if not self.mappings:
            raise ValueError("a config needs at least one mapping")
        return self

    @property
    def connector(self) -> Connector:
        return CONNECTORS[self.type_id]

    @property
    def mapping_ids(self) -> tuple[str, ...]:
        return tuple(mapping.id for mapping in self.mappings)

    @property
    def credentials(self) -> str:
        """Every credential of the config, joined: together they name the destination
        account a rate limit counts (worker.pacing keeps only a digest)."""
        secrets = self.options.model_dump().values()
        return "\n".join(v.get_secret_value() for v in secrets if isinstance(v, SecretStr))

    def accepts_regulation(self, regulation: str | None) -> bool:
        """Whether an event of ``regulation`` reaches this connector: an event naming none
        does, and a connector limited to none takes every regulation."""
        if regulation is None or not self.regulations:
            return True
        return regulation.strip().lower() in self.regulations

    def to_stored(self) -> dict[str, Any]:
        """The config as JSON for the store, credentials in clear: for Redis only."""
        return self._export(SecretStr.get_secret_value)

    def describe(self) -> dict[str, Any]:
        """The config as JSON an operator may see: credentials show their last 4 only."""
        return self._export(lambda secret: mask(secret.get_secret_value()))

    def _export(self, show: Callable[[SecretStr], str]) -> dict[str, Any]:
        authentication: dict[str, Any] = {}
        properties: dict[str, Any] = {}
        for name, value in self.options.model_dump().items():
            if isinstance(value, SecretStr):
                authentication[name] = show(value)
            else:
                properties[name] = value
        return {
            "id": self.id,
            "type_id": self.type_id,
            "enabled": self.enabled,
            "upsert_mode": self.upsert_mode,
            "on_user_deleted": self.on_user_deleted,
            "regulations": list(self.regulations),
            "authentication": authentication,
            "properties": properties,
            "mappings": [mapping.model_dump() for mapping in self.mappings],
        }


def parse_config(
    raw: object, *, connector_id: str | None = None, allow_hosts: tuple[str, ...] = ()
) -> ConnectorConfig:
    """Validate a config in either shape and normalise it.

    ``connector_id``, when given, is the config's id whatever ``raw`` says (the store's
    field name, a CLI argument). ``allow_hosts`` are the extra ``host:port`` destinations
    an operator allowed (PREFSYNC_ALLOW_HOSTS). Raises ``InvalidConfig`` with one line per
    problem, each naming its field; no line ever holds a credential.
    """
    if not isinstance(raw, dict):
        raise InvalidConfig(f"config: must be a JSON object, not {type(raw).__name__}")
    # Before any validator sees them: pydantic raises UnicodeEncodeError, not a validation
    # error, when a message quotes such a string (a server "\ud800", say).
    if lone := [f"{path}: not UTF-8 text (a lone surrogate)" for path in _not_utf8(raw)]:
        raise _refusal(lone, _credentials(raw, None))
    problems = [f"{key}: unknown field" for key in raw if key not in _TOP_LEVEL_KEYS]
    connector = _connector(raw.get("type_id"), problems)
    if connector is None:
        raise _refusal(problems, _credentials(raw, None))

    shape = _Shape.of(raw, problems)
    options = _options(connector, shape, allow_hosts, problems)
    mappings = _mappings(connector, shape.mappings, shape.mappings_path, problems)
    common_input = {
        key: raw[key]
        for key in ("enabled", "upsert_mode", "on_user_deleted", "regulations")
        if key in raw
    }
    common_input["id"] = (
        connector_id if connector_id is not None else raw.get("id", connector.type_id)
    )
    try:
        common = _Common.model_validate(common_input)
    except ValidationError as exc:
        problems += _describe(exc, lambda loc: "")
    if problems:
        raise _refusal(problems, _credentials(raw, connector))
    return ConnectorConfig(
        **dict(common), type_id=connector.type_id, mappings=mappings, options=options
    )


def _connector(type_id: object, problems: list[str]) -> Connector | None:
    if type_id is None:
        problems.append("type_id: field required")
        return None
    if not isinstance(type_id, str):
        problems.append("type_id: must be a string")
        return None
    connector = get_connector(type_id)
    if connector is None:
        # Quoted whole or not at all: the masking below cannot find a truncated key.
        shown = repr(type_id) if len(type_id) <= 40 else f"name of {len(type_id)} characters"
        problems.append(f"type_id: unknown {shown} (known: {', '.join(KNOWN_TYPE_IDS)})")
    return connector


class _Shape:
    """Where a config keeps its options and mappings, and what to call them in messages."""

    def __init__(self) -> None:
        self.options: dict[str, Any] | None = None
        #: option name -> the part of the config that gave it
        self.sources: dict[str, str] = {}
        #: where a missing option is reported
        self.missing_source = "authentication"
        self.mappings: object = None
        self.mappings_path = "mappings"

    @classmethod
    def of(cls, raw: dict[str, Any], problems: list[str]) -> _Shape:
        shape = cls()
        if "config" in raw:
            shape._older(raw, problems)
        else:
            shape._newer(raw, problems)
        return shape

    def _older(self, raw: dict[str, Any], problems: list[str]) -> None:
        self.missing_source = "config"
        self.mappings_path = "config.properties"
        newer = [key for key in _NEWER_SHAPE_KEYS if key in raw]
        if newer:
            problems.append(
                f"config: give either config (older shape) or {', '.join(newer)} "
                "(newer shape), not both"
            )
        config = raw["config"]
        if not isinstance(config, dict):
            problems.append("config: must be an object")
            return
        self.options = {key: value for key, value in config.items() if key != "properties"}
        self.sources = dict.fromkeys(self.options, "config")
        self.mappings = config.get("properties")

    def _newer(self, raw: dict[str, Any], problems: list[str]) -> None:
        authentication = raw.get("authentication", {})
        properties = raw.get("properties", {})
        if not isinstance(authentication, dict):
            problems.append("authentication: must be an object")
        if not isinstance(properties, dict):
            problems.append("properties: must be an object (the mapping list goes in mappings)")
        self.mappings = raw.get("mappings")
        if not isinstance(authentication, dict) or not isinstance(properties, dict):
            return
        for key in authentication.keys() & properties.keys():
            problems.append(f"properties.{key}: also given in authentication")
        self.options = {**properties, **authentication}
        self.sources = {
            **dict.fromkeys(properties, "properties"),
            **dict.fromkeys(authentication, "authentication"),
        }


def _options(
    connector: Connector, shape: _Shape, allow_hosts: tuple[str, ...], problems: list[str]
) -> BaseModel | None:
    if shape.options is None:
        return None
    try:
        return connector.options_model.model_validate(
            shape.options, context={"allow_hosts": allow_hosts}
        )
    except ValidationError as exc:
        problems += _describe(
            exc,
            lambda loc: (
                shape.sources.get(str(loc[0]), shape.missing_source)
                if loc
                else shape.missing_source
            ),
        )
        return None


def _mappings(
    connector: Connector, raw: object, path: str, problems: list[str]
) -> tuple[Mapping, ...]:
    if raw is None:
        problems.append(f"{path}: field required")
        return ()
    if not isinstance(raw, list):
        problems.append(f"{path}: must be a list of {{id, value}} objects")
        return ()
    if not raw:
        problems.append(f"{path}: needs at least one mapping")
        return ()
    mappings: list[Mapping] = []
    # Compared without case: Brevo upper-cases attribute names, and OPTED_IN is opted_in.
    first_index: dict[str, int] = {}
    for index, entry in enumerate(raw):
        where = f"{path}[{index}]"
        try:
            mapping = Mapping.model_validate(entry)
        except ValidationError as exc:
            problems += _describe(exc, lambda loc, where=where: where)
            continue
        if problem := connector.mapping_problem(mapping.id):
            problems.append(f"{where}.id: {problem}")
        if not is_property_name(mapping.value):
            problems.append(
                f"{where}.value: {mapping.value!r} (mapping {mapping.id}) is not a property "
                f"name an event can carry, so it would never have a value; the names are "
                f"{', '.join(PROPERTY_SHAPES)} (events.md)"
            )
        key = mapping.id.casefold()
        if key in first_index:
            problems.append(
                f"{where}.id: {mapping.id!r} is already mapped by {path}[{first_index[key]}]"
            )
        else:
            first_index[key] = index
        mappings.append(mapping)
    return tuple(mappings)


def _describe(exc: ValidationError, prefix: Callable[[tuple[int | str, ...]], str]) -> list[str]:
    """One line per pydantic error, ``path: message``, never quoting the input."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = error["loc"]
        path = prefix(loc)
        for part in loc:
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
        lines.append(f"{path or 'config'}: {_message(error['type'], error['msg'])}")
    return lines


def _message(kind: str, message: str) -> str:
    if kind == "missing":
        return "field required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in ("model_type", "dict_type"):
        return "must be an object"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def _not_utf8(raw: dict[str, Any]) -> Iterator[str]:
    """The path of every key or text in ``raw`` that UTF-8 cannot encode (JSON's
    "\\ud800" escapes give such lone surrogates); iterative, for any nesting."""
    stack: list[tuple[str, Any]] = [("", raw)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and not is_utf8(value):
            yield path
        elif isinstance(value, dict):
            children = [
                (f"{path}.{key}" if path else str(key), key, child) for key, child in value.items()
            ]
            # Pushed in reverse so that they pop in the config's order; a bad key is pushed
            # as a text of its own path, to be reported just before its value.
            for child_path, key, child in reversed(children):
                stack.append((child_path, child))
                if isinstance(key, str) and not is_utf8(key):
                    stack.append((child_path, key))
        elif isinstance(value, list):
            stack.extend(reversed([(f"{path}[{i}]", child) for i, child in enumerate(value)]))


def _refusal(problems: list[str], secrets: list[str]) -> InvalidConfig:
    # Masked first, then escaped: a line break in a quoted name or value must not split
    # one problem into two lines, and escaping first could hide a key from the masking.
    return InvalidConfig("\n".join(_printable(line) for line in _scrub(problems, secrets)))


def _printable(line: str) -> str:
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in line)


#: Shorter values are not masked: no destination issues such keys, and masking a value
#: like "T" or "id" wherever it occurs would garble every message, field names included.
_SHORTEST_SECRET = 8


def _credentials(raw: dict[str, Any], connector: Connector | None) -> list[str]:
    """The credentials ``raw`` gives, wherever a shape keeps options (read from ``raw``
    itself: a refused config may have no usable shape). Without a connector, the value of
    any connector's credential field counts. Stripped, as the options models strip them
    before a validator may quote them."""
    known = CONNECTORS.values() if connector is None else [connector]
    names = set().union(*(_secret_names(each.options_model) for each in known))
    return [
        value.strip()
        for source in (raw.get(part) for part in ("authentication", "properties", "config"))
        if isinstance(source, dict)
        for name, value in source.items()
        if name in names and isinstance(value, str) and len(value.strip()) >= _SHORTEST_SECRET
    ]


def _scrub(problems: list[str], secrets: list[str]) -> list[str]:
    """Mask credentials in messages: a key pasted into the wrong field (say, as the server)
    would otherwise be quoted back by that field's message."""
    for secret in secrets:
        # Without case: a validator may have lower-cased what it quotes (a host name).
        pattern = re.compile(re.escape(secret), re.IGNORECASE)
        problems = [pattern.sub(mask(secret), line) for line in problems]
    return problems


def _secret_names(model: type[BaseModel]) -> set[str]:
    """Every input name of the model's SecretStr fields, aliases included."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        if SecretStr not in (field.annotation, *get_args(field.annotation)):
            continue
        names.add(name)
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
    return names


class ConfigStore:
    """Every tenant's connector configs in Redis: one hash per tenant, key
    ``prefsync:connectors:{tenant}``, field = connector id, value = ``to_stored()`` JSON
    sealed with the first of PREFSYNC_SECRET_KEYS (worker.sealing): the credentials are
    never in Redis, its AOF or a backup in clear."""

    def __init__(self, redis: Redis, sealer: Sealer, allow_hosts: tuple[str, ...] = ()) -> None:
        self.redis = redis
        self.sealer = sealer
        self.allow_hosts = allow_hosts

    def put(self, tenant: str, config: ConnectorConfig) -> None:
        """Store ``config``, replacing the tenant's config of the same id. It is validated
        again as it will be read (InvalidConfig otherwise), so a model built without
        ``parse_config`` cannot store what every read would refuse."""
        stored = config.to_stored()
        parse_config(stored, connector_id=config.id, allow_hosts=self.allow_hosts)
        self.redis.hset(_key(tenant), config.id, self.sealer.seal(json.dumps(stored)))

    def reencrypt(self) -> tuple[int, int]:
        """Seal again, under the first key, every stored config that is not (plain, or
        sealed under an older key); (re-encrypted, already current). A config no key opens
        is left as it is and named in the ``InvalidConfig`` raised at the end."""
        changed = current = 0
        unreadable: builtins.list[str] = []
        for name in self.redis.scan_iter(match=f"{KEY_PREFIX}*", count=500):
            tenant = _text(name).removeprefix(KEY_PREFIX)
            for connector_id, raw in self.redis.hgetall(name).items():
                if self.sealer.is_current(raw):
                    current += 1
                    continue
                try:
                    text = self.sealer.open(raw)
                except SealingError:
                    unreadable.append(f"tenant {tenant!r}, connector {_text(connector_id)!r}")
                    continue
                # Only if unchanged since read: a config put meanwhile is already current.
                with self.redis.pipeline(transaction=True) as pipe:
                    pipe.watch(name)
                    if pipe.hget(name, connector_id) != raw:
                        continue
                    pipe.multi()
                    pipe.hset(name, connector_id, self.sealer.seal(text))
                    try:
                        pipe.execute()
                    except WatchError:
                        continue
                changed += 1
        if unreadable:
            raise InvalidConfig(
                f"re-encrypted {changed}, but no key of PREFSYNC_SECRET_KEYS opens: "
                + "; ".join(unreadable)
            )
        return changed, current

    def get(self, tenant: str, connector_id: str) -> ConnectorConfig | None:
        raw = self.redis.hget(_key(tenant), connector_id)
        return None if raw is None else self._load(tenant, connector_id, raw)

    # builtins.list: within this class, "list" is the method below.
    def ids(self, tenant: str) -> builtins.list[str]:
        """The tenant's connector ids, sorted, without reading (or validating) the configs."""
        return sorted(_text(field) for field in self.redis.hkeys(_key(tenant)))

    def list(self, tenant: str) -> builtins.list[ConnectorConfig]:
        """The tenant's configs, sorted by id."""
        stored = {_text(field): raw for field, raw in self.redis.hgetall(_key(tenant)).items()}
        return [
            self._load(tenant, connector_id, stored[connector_id])
            for connector_id in sorted(stored)
        ]

    def delete(self, tenant: str, connector_id: str) -> bool:
        """Remove a config; False when the tenant had none of that id."""
        return bool(self.redis.hdel(_key(tenant), connector_id))

    def _load(self, tenant: str, connector_id: str, raw: bytes | str) -> ConnectorConfig:
        where = f"tenant {tenant!r}, connector {connector_id!r}"
        try:
            text = self.sealer.open(raw)
        except SealingError as exc:
            raise InvalidConfig(f"{where}: the stored config cannot be read: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError:
            raise InvalidConfig(f"{where}: the stored config is not JSON") from None
        try:
            return parse_config(data, connector_id=connector_id, allow_hosts=self.allow_hosts)
        except InvalidConfig as exc:
            lines = str(exc).splitlines()
            raise InvalidConfig(
                "\n".join(f"{where}: stored config no longer valid: {line}" for line in lines)
            ) from None


def _key(tenant: str) -> str:
    return f"{KEY_PREFIX}{tenant}"


def _text(value: bytes | str) -> str:
    # The shared client is created with decode_responses=False.
    return value.decode() if isinstance(value, bytes) else value
