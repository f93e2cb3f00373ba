"""The record prefsync keeps per person: its format, and the one Python reader of it.

One Redis string per tenant and person (``key("person", tenant, person)``, the person named
by the keyed hash of their id: worker.infra.pseudonym), JSON, holding

- ``p``: per property, the newest known value and its source: ``[timestamp_us, version,
  value JSON, event key]`` (the ordering key of the event it came from, and that event);
- ``t``: per connector, per property, a short keyed hash (*ref*) of the event whose value
  that connector was last told (or whose delivery ended there: skipped as unchanged, say);
- ``d``: per connector, the fields several properties feed, as last delivered (JSON);
- ``l``: per connector, the lock: ``[token, expiry in epoch ms]``;
- ``e``: the timestamp_us of the person's erasure (their tombstone: worker.records.erasure);
- ``x``: per connector, ``[timestamp_us, ref]`` of the newest erasure that ended there.

Parts left empty are left out. After the record come lines that ``StateStore.finish``
appended (``appended``: ``f`` the connector, ``k`` the lock token it releases, ``t``,
``d``, ``x`` as in the record), folded in order by whoever reads it. Timestamps stay
strings: Lua would print a 16-digit number as 1.7e+15.

The record of a casefolded id (worker.records.state: ``StateStore.folded``) has the same
format, holding ``p``, ``l`` and ``e`` for every spelling of it.

The scripts of worker.records.state read and write the record with lua/person.lua, which
reads it exactly as ``load_record`` here does: change the two together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.core.events import OrderingKey, Value
from worker.records.keys import text

#: How much of an event's ref a record keeps (64 bits: one person's events never collide).
REF = 16

_PARTS = ("p", "t", "d", "l", "x")

# Built once: json.dumps with options builds a new encoder at every call.
_encode_line = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True, slots=True)
class Known:
    """What prefsync believes about one property of a person (``prefsync state show``)."""

    value: Value
    timestamp_us: int
    version: int | None
    event_key: str  # the event the value came from

    @classmethod
    def of(cls, timestamp_us: str, version: str, value_json: str, event_key: str) -> Known:
        """A property's entry as records keep it (strings; version "" for none)."""
        return cls(
            json.loads(value_json), int(timestamp_us), int(version) if version else None, event_key
        )

    @property
    def ordering(self) -> OrderingKey:
        return OrderingKey(self.timestamp_us, self.version)


def load_record(raw: bytes | str | None) -> dict[str, Any]:
    """A person's record as lua/person.lua's ``load`` reads it: the record, then the lines
    ``finish`` appended, folded in order."""
    record: dict[str, Any] = {"p": {}, "t": {}, "d": {}, "l": {}, "x": {}, "e": None}
    if raw is None:
        return record
    for line in text(raw).split("\n"):
        if not line:
            continue
        part = json.loads(line)
        connector_id = part.get("f")
        if connector_id is None:
            record.update({name: part.get(name) or {} for name in _PARTS})
            record["e"] = part.get("e")
            continue
        for name in ("t", "d"):
            if part.get(name):
                record[name][connector_id] = (record[name].get(connector_id) or {}) | part[name]
        erasure = record["x"].get(connector_id)
        if part.get("x") and (erasure is None or int(part["x"][0]) >= int(erasure[0])):
            record["x"][connector_id] = part["x"]
        lock = record["l"].get(connector_id)
        if lock and lock[0] == part.get("k"):
            del record["l"][connector_id]
    return record


def current_values(record: Mapping[str, Any]) -> dict[str, Value]:
    """The newest known value of every property."""
    return {name: json.loads(entry[2]) for name, entry in record["p"].items()}


def delivered_to(record: Mapping[str, Any], connector_id: str) -> dict[str, Any]:
    """The fields several properties feed, as last delivered to the connector."""
    sent = record["d"].get(connector_id) or {}
    return {name: json.loads(raw) for name, raw in sent.items()}


def appended(
    connector_id: str,
    token: str,
    erasure: list[str] | None,
    told: Mapping[str, str],
    sent: Mapping[str, Any] | None,
) -> str:
    """The line ``finish`` appends to a record: the lock ``token`` released; the erasure
    (``[timestamp_us, ref]``) and the properties' refs told to the connector; the fields
    several properties feed as delivered (``sent``)."""
    line: dict[str, Any] = {"f": connector_id, "k": token}
    if erasure:
        line["x"] = erasure
    if told:
        line["t"] = told
    if sent:
        line["d"] = {name: json.dumps(value) for name, value in sent.items()}
    return _encode_line(line)
