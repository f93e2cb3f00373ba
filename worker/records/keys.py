"""How prefsync names its Redis keys, and reads back what Redis answers (bytes: the shared
client does not decode)."""

from __future__ import annotations

import json

# Built once: json.dumps with options builds a new encoder at every call.
_encode_parts = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def key(kind: str, *parts: str) -> str:
    """A Redis key whose variable parts cannot run into each other.

    Tenants and users are free text: with plain ":" joins, tenant "a:b" + user "c" and
    tenant "a" + user "b:c" would share state. JSON-encoding the parts keeps them apart.
    """
    return f"prefsync:{kind}:{_encode_parts(parts)}"


def text(part: bytes | str) -> str:
    return part.decode() if isinstance(part, bytes) else part
