"""The destinations the worker delivers to, by type id.

Adding a destination takes a module here with its ``Connector`` subclass and one line in
``_REGISTERED``; nothing else names a destination.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from worker.connectors.base import Connector
from worker.connectors.braze import BrazeConnector
from worker.connectors.sendinblue import SendinblueConnector
from worker.infra.settings import InvalidSettings

_REGISTERED: tuple[Connector, ...] = (
    BrazeConnector(),
    SendinblueConnector(),
)

#: canonical type_id -> connector
CONNECTORS: dict[str, Connector] = {connector.type_id: connector for connector in _REGISTERED}


def _by_name(connectors: Iterable[Connector]) -> dict[str, Connector]:
    names: dict[str, Connector] = {}
    for connector in connectors:
        for name in (connector.type_id, *connector.aliases):
            if name in names:
                raise RuntimeError(f"two connectors claim the type id {name!r}")
            names[name] = connector
    return names


_BY_NAME = _by_name(_REGISTERED)

#: every name a config may give as ``type_id``, aliases included, sorted
KNOWN_TYPE_IDS: tuple[str, ...] = tuple(sorted(_BY_NAME))


def get_connector(type_id: str) -> Connector | None:
    """The connector a config's ``type_id`` or one of its aliases names (any case, spaces
    around ignored), or None when no connector has that name."""
    return _BY_NAME.get(type_id.strip().lower())


def rate_limits(configured: Mapping[str, float]) -> dict[str, float]:
    """``PREFSYNC_RATE_LIMITS`` by canonical type id: a limit may name a connector by an
    alias, in any case. Raises ``InvalidSettings`` for a name no connector has.

    Resolved here rather than in the settings, which every module (connectors included)
    reads and which therefore must not read the connectors."""
    resolved: dict[str, float] = {}
    for name, rate in configured.items():
        connector = get_connector(name)
        if connector is None:
            raise InvalidSettings(
                f"PREFSYNC_RATE_LIMITS: names {name!r}, which is not a connector type "
                f"(known: {', '.join(KNOWN_TYPE_IDS)})"
            )
        resolved[connector.type_id] = rate
    return resolved
