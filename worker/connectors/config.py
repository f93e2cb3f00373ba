"""Connector configs: the two shapes tenants send, the one frozen model they become, and the
per-tenant store in Redis.

Tenants arrive with either generation of the vendor's config shape
(docs/mappings.md#connector-configs)::

    newer: {"type_id", "authentication": {...}, "properties": {...}, "mappings": [...]}
    older: {"type_id", "config": {credentials and options..., "properties": [mappings]}}

both with an optional ``upsert_mode``, ``on_user_deleted`` and ``bidirectional`` at the top
level, plus our own optional ``id``, ``enabled`` and ``regulations``. Nothing here knows a
destination: the connector registered for the ``type_id`` (worker.connectors) validates its
own options (``options_model``, fed the newer shape's ``authentication`` and ``properties``
merged, or
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

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, get_args

from pydantic import (
    AliasChoices,
    BaseModel,
    SecretStr,
    ValidationError,
)
from pydantic_core import ErrorDetails

from worker.connectors import CONNECTORS, KNOWN_TYPE_IDS, get_connector
from worker.connectors.base import Connector
from worker.connectors.model import ConnectorConfig, Mapping, _Common
from worker.core.errors import InvalidConfig
from worker.core.events import PROPERTY_SHAPES, is_property_name, is_utf8
from worker.core.masking import mask
from worker.core.validation import Location, describe

if TYPE_CHECKING:
    pass

_TOP_LEVEL_KEYS = frozenset(
    {
        "id",
        "type_id",
        "enabled",
        "upsert_mode",
        "on_user_deleted",
        "regulations",
        "bidirectional",
        "authentication",
        "properties",
        "mappings",
        "config",
    }
)
_NEWER_SHAPE_KEYS = ("authentication", "properties", "mappings")


def parse_config(
    raw: object,
    *,
    connector_id: str | None = None,
    allow_hosts: tuple[str, ...] = (),
    connectors: dict[str, Connector] = CONNECTORS,
    storing: bool = False,
) -> ConnectorConfig:
    """Validate a config in either shape and normalise it.

    ``connector_id``, when given, is the config's id whatever ``raw`` says (the store's
    field name, a CLI argument). ``allow_hosts`` are the extra ``host:port`` destinations
    an operator allowed (PREFSYNC_ALLOW_HOSTS). ``connectors`` (by canonical type id) holds
    the connector the config gets: the process's own (``worker.connectors.connectors``)
    when it delivers. ``storing``: the config is about to be stored, so a mapping id that
    looks like a keyword without being one is refused too (a config already stored is
    still read). Raises ``InvalidConfig`` with one line per problem, each naming its
    field; no line ever holds a credential.
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
    for index, mapping in enumerate(mappings):
        if problem := _keyword_problem(connector, mapping, storing):
            problems.append(f"{shape.mappings_path}[{index}].id: {problem}")
    common_input = {
        key: raw[key]
        for key in ("enabled", "upsert_mode", "on_user_deleted", "regulations", "bidirectional")
        if key in raw
    }
    common_input["id"] = (
        connector_id if connector_id is not None else raw.get("id", connector.type_id)
    )
    try:
        common = _Common.model_validate(common_input)
    except ValidationError as exc:
        problems += describe(exc, _written, _message)
    if problems:
        raise _refusal(problems, _credentials(raw, connector))
    return ConnectorConfig(
        **dict(common),
        type_id=connector.type_id,
        mappings=mappings,
        options=options,
        connector=connectors[connector.type_id],
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
        problems += describe(
            exc,
            lambda loc: _written(
                loc,
                shape.sources.get(str(loc[0]), shape.missing_source)
                if loc
                else shape.missing_source,
            ),
            _message,
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
            problems += describe(exc, lambda loc, where=where: _written(loc, where), _message)
            continue
        if problem := connector.mapping_problem(mapping.id):
            problems.append(f"{where}.id: {problem}")
        if not is_property_name(mapping.value):
            problems.append(
                f"{where}.value: {mapping.value!r} (mapping {mapping.id}) is not a property "
                f"name an event can carry, so it would never have a value; the names are "
                f"{', '.join(PROPERTY_SHAPES)} (docs/mappings.md#property-names)"
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


def _keyword_problem(connector: Connector, mapping: Mapping, storing: bool) -> str | None:
    """Why a mapping id is refused: a keyword marked ``custom``, or, in a config being
    stored, a likely typo of a keyword (``OPTED_IM``, ``UNSUBSCRIBE``: it would quietly
    become a custom attribute while the person's subscription stays as it was)."""
    fed = connector.feed(mapping.id)
    if mapping.custom:
        if fed is None:
            return None
        return (
            f"{mapping.id!r} feeds {fed.field}, it cannot be a custom attribute: "
            'remove "custom": true'
        )
    if fed is not None or not storing:
        return None
    near = [kw for kw in connector.keywords if _distance(mapping.id.upper(), kw) <= 2]
    if not near:
        return None
    return (
        f"{mapping.id!r} is not a keyword: did you mean {near[0]!r}? "
        f'If it is a custom attribute of that name, add "custom": true to the mapping'
    )


def _distance(a: str, b: str) -> int:
    """Edits (insert, delete, replace a character) that turn ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, char_b in enumerate(b, 1):
            previous, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, previous + (char_a != char_b)),
            )
    return row[-1]


def _written(loc: Location, start: str = "") -> str:
    """Where a pydantic error is, as the config writes it after ``start``:
    ``config.properties[2].value``."""
    path = start
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else part)
    return path or "config"


def _message(error: ErrorDetails) -> str:
    """A pydantic error's message in the config's words, never quoting the input."""
    kind, message = error["type"], error["msg"]
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
