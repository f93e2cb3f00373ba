"""A keyed hash that stands for a user id wherever prefsync keeps one.

prefsync's own records (each person's record: newest-wins state, what each connector was
told, locks, the erasure tombstone; the audit trail) name a person by
``Pseudonyms.user(id)`` — HMAC-SHA256 of the id under a secret key, hex, cut to 32
characters (128 bits: no collision among any number of people a tenant will ever have) —
never by the id itself. Once the person is erased, nothing in Redis holds their id, yet
whoever knows it (the tenant, asked to prove the erasure) finds their records again by
hashing it with the same key.

The key is ``PREFSYNC_USER_HASH_KEY``. A machine without it generates one, once, and keeps
it in Redis (``KEY``), so every worker and the CLI agree; a warning says so, since a key
kept beside the hashes protects less than one kept apart (and a lost Redis loses it: the
hashes of the records kept until then no longer match anyone).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

import redis

from worker.infra.settings import Settings

KEY = "prefsync:user-hash-key"
LENGTH = 32  # hex characters kept

# The standard library's logger: in a worker it goes through the JSON log pipeline
# (worker.infra.logging); in the CLI, where none is set up, to stderr — never into the output
# that scripts read.
log = logging.getLogger("prefsync.pseudonym")


class Pseudonyms:
    """Keyed hashes of user ids (and of anything else that must not be kept readable)."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the user hash key must not be empty")
        self._key = key

    def user(self, user_id: str) -> str:
        """The pseudonym of one user id."""
        return self.of("user", user_id)

    def of(self, *parts: str) -> str:
        """The keyed hash of ``parts`` together (a user and an event key, say); the parts
        are length-prefixed, so ("ab", "c") and ("a", "bc") hash apart."""
        message = b"".join(
            len(encoded).to_bytes(4, "big") + encoded for encoded in (p.encode() for p in parts)
        )
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:LENGTH]

    def __repr__(self) -> str:  # never the key
        return "Pseudonyms(…)"


def load_key(client: redis.Redis, settings: Settings) -> bytes:
    """``PREFSYNC_USER_HASH_KEY``, else the key kept in Redis, generated the first time
    (SET NX: two processes starting at once agree on the one that was stored first)."""
    if settings.user_hash_key is not None:
        return settings.user_hash_key.get_secret_value().encode()
    client.set(KEY, secrets.token_hex(32), nx=True)
    stored = client.get(KEY)
    log.warning(
        "PREFSYNC_USER_HASH_KEY is not set: user ids are hashed with a key kept in Redis "
        "(%s); set the setting to keep the key apart from the hashes (docs/erasure.md)",
        KEY,
    )
    return stored if isinstance(stored, bytes) else str(stored).encode()
