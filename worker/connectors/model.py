"""The frozen model a connector config becomes: one destination account of a tenant,
its mappings and its connector. worker.connectors.config builds it from either shape."""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from worker.connectors.base import Connector
from worker.core.masking import mask

_ID_CHARACTERS = frozenset(string.ascii_letters + string.digits + "_.-")


class Mapping(BaseModel):
    """``id`` names the destination field or state, ``value`` the PMP property: docs/mappings.md."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(min_length=1)
    value: str = Field(min_length=1)
    #: the id is a custom attribute even though it looks like a keyword (OPTED_IM…): a
    #: config is otherwise refused with the keyword it likely meant (docs/mappings.md)
    custom: bool = False


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
    #: the tool's refusals come back to prefsync and the PMP (docs/two-way-consent.md); needs the
    #: tenant's PMP credentials, checked when the config is stored
    bidirectional: bool = False

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
    """One destination account of a tenant. Build it with ``parse_config``
    (worker.connectors.config)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    #: canonical (an alias such as "brevo" is resolved)
    type_id: str
    mappings: tuple[Mapping, ...]
    #: the connector's ``options_model`` instance: credentials and destination options
    options: BaseModel
    #: the destination's connector (worker.connectors): how changes become its calls
    connector: Annotated[Connector, Field(exclude=True, repr=False)]

    @model_validator(mode="after")
    def _fits_connector(self) -> ConnectorConfig:
        if self.connector.type_id != self.type_id:
            raise ValueError(f"type_id {self.type_id!r} is not {self.connector.type_id}'s")
        if not isinstance(self.options, self.connector.options_model):
            raise ValueError(f"options are not {self.type_id} options")
        if not self.mappings:
            raise ValueError("a config needs at least one mapping")
        return self

    @property
    def mapping_ids(self) -> tuple[str, ...]:
        return tuple(mapping.id for mapping in self.mappings)

    @property
    def credentials(self) -> str:
        """Every credential of the config, joined: together they name the destination
        account a rate limit counts (worker.delivery.pacing keeps only a digest)."""
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
            "bidirectional": self.bidirectional,
            "authentication": authentication,
            "properties": properties,
            "mappings": [mapping.model_dump(exclude_defaults=True) for mapping in self.mappings],
        }
