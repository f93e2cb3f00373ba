"""The destinations the worker delivers to, by type id.

Adding a destination takes a module here with its ``Connector`` subclass and one line in
``_REGISTERED``; nothing else names a destination.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.connectors.base import Connector, ConnectorSettings
from worker.connectors.braze import BrazeConnector
from worker.connectors.sendinblue import SendinblueConnector

_REGISTERED: tuple[type[Connector], ...] = (
    BrazeConnector,
    SendinblueConnector,
)


def connectors(settings: ConnectorSettings) -> dict[str, Connector]:
    """A connector of every registered type, built with ``settings``, by canonical type id:
    the set a process delivers with (worker.delivery.runtime builds it once)."""
    return {kind.type_id: kind(settings) for kind in _REGISTERED}


#: canonical type_id -> connector, built with the default settings: enough to validate
#: configs, and to deliver where no process settings apply
CONNECTORS: dict[str, Connector] = connectors(ConnectorSettings())


def _by_name(connectors: Iterable[Connector]) -> dict[str, Connector]:
    names: dict[str, Connector] = {}
    for connector in connectors:
        for name in (connector.type_id, *connector.aliases):
            if name in names:
                raise RuntimeError(f"two connectors claim the type id {name!r}")
            names[name] = connector
    return names


_BY_NAME = _by_name(CONNECTORS.values())

#: every name a config may give as ``type_id``, aliases included, sorted
KNOWN_TYPE_IDS: tuple[str, ...] = tuple(sorted(_BY_NAME))


def get_connector(type_id: str) -> Connector | None:
    """The connector a config's ``type_id`` or one of its aliases names (any case, spaces
    around ignored), or None when no connector has that name."""
    return _BY_NAME.get(type_id.strip().lower())
