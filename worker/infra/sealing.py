"""Connector configs sealed at rest: what Redis holds (and so every AOF, RDB and backup
file) is a Fernet token, not the tenant's API keys.

Keys come from ``PREFSYNC_SECRET_KEYS``: Fernet keys separated by commas. The first seals,
every one opens, so a key is rotated by putting a new one first, running
``prefsync connectors reencrypt``, then dropping the old one. A value stored before
sealing existed (plain JSON) is still read, until it is re-encrypted.

Without the setting, a development key is generated once and kept in a file of the user's
own (``PREFSYNC_DEV_KEY_FILE``, by default ``~/.config/prefsync/secret.key``, mode 0600; a
file readable by group or others is refused), shared by every process of that user, with a
warning: the README's two commands work on a
fresh machine, and production sets the keys (the compose stack refuses to start without).
Keeping the key beside the data, in Redis, would defeat the point.

A value is sealed for its place: AES-256-GCM (the ``cryptography`` package) with the
tenant and connector id as associated data, under a key derived (HKDF-SHA256) from the
Fernet key given. A value altered, or copied to another tenant's or connector's field,
does not open: one tenant's sealed config cannot make another's deliveries use its API
key. The release before this one sealed with Fernet (``fernet:``, not bound to a place):
those still open, and ``reencrypt`` seals them bound. A plain value (a release before
sealing) opens only without PREFSYNC_SECRET_KEYS (the development key); with keys set it
is refused, naming ``prefsync connectors reencrypt``, which seals it.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker.infra.settings import InvalidSettings

log = structlog.get_logger("prefsync.sealing")

#: What a value sealed for its place starts with: "aead:" and base64 of nonce + ciphertext.
PREFIX = b"aead:"
#: What the release before this one sealed with (Fernet, not bound to a place).
FERNET_PREFIX = b"fernet:"
_NONCE = 12
_INFO = b"prefsync connector config"


class SealingError(Exception):
    """A stored value cannot be opened: sealed under a key not in PREFSYNC_SECRET_KEYS, for
    another place, altered, or plain where keys are set."""


class Sealer:
    """Seals and opens the values of one place each (``tenant``, ``connector_id``).

    ``accept_plain``: whether a plain value opens (no PREFSYNC_SECRET_KEYS: the
    development key); ``reencrypt`` opens them either way."""

    def __init__(self, keys: Sequence[str], accept_plain: bool = False) -> None:
        if not keys:
            raise ValueError("PREFSYNC_SECRET_KEYS: at least one key is needed")
        try:
            self._fernets = [Fernet(key.strip().encode()) for key in keys]
        except ValueError:
            raise ValueError(
                "PREFSYNC_SECRET_KEYS: each key must be 32 url-safe base64-encoded bytes "
                "(make one with `prefsync connectors new-key`)"
            ) from None
        self._multi = MultiFernet(self._fernets)
        self._aeads = [_aead(key) for key in keys]
        self.accept_plain = accept_plain

    def seal(self, text: str, tenant: str, connector_id: str) -> bytes:
        nonce = os.urandom(_NONCE)
        sealed = self._aeads[0].encrypt(nonce, text.encode(), _place(tenant, connector_id))
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed)

    def open(self, raw: bytes | str, tenant: str, connector_id: str) -> str:
        """The text of a stored value of this place."""
        return self._open(raw, tenant, connector_id, self.accept_plain)

    def open_to_reseal(self, raw: bytes | str, tenant: str, connector_id: str) -> str:
        """As ``open``, plain values included: ``reencrypt`` seals them."""
        return self._open(raw, tenant, connector_id, True)

    def is_current(self, raw: bytes | str, tenant: str, connector_id: str) -> bool:
        """Whether a stored value is sealed for its place under the first key (nothing to
        re-encrypt)."""
        data = _bytes(raw)
        if not data.startswith(PREFIX):
            return False
        return self._open_bound(data, tenant, connector_id, 1) is not None

    def _open(self, raw: bytes | str, tenant: str, connector_id: str, plain: bool) -> str:
        data = _bytes(raw)
        if data.startswith(PREFIX):
            text = self._open_bound(data, tenant, connector_id, len(self._aeads))
            if text is None:
                raise SealingError(
                    "sealed under a key that is not in PREFSYNC_SECRET_KEYS, for another "
                    "tenant or connector, or altered"
                )
            return text
        if data.startswith(FERNET_PREFIX):
            try:
                return self._multi.decrypt(data[len(FERNET_PREFIX) :]).decode()
            except InvalidToken:
                raise SealingError(
                    "sealed under a key that is not in PREFSYNC_SECRET_KEYS, or altered"
                ) from None
        if not plain:
            raise SealingError(
                "stored in plain text, not sealed, though PREFSYNC_SECRET_KEYS is set: "
                "run `prefsync connectors reencrypt` to seal it"
            )
        # Not UTF-8 cannot be JSON either: the caller says so.
        return data.decode(errors="replace")

    def _open_bound(self, data: bytes, tenant: str, connector_id: str, keys: int) -> str | None:
        try:
            sealed = base64.urlsafe_b64decode(data[len(PREFIX) :])
        except ValueError:
            return None
        nonce, ciphertext = sealed[:_NONCE], sealed[_NONCE:]
        for aead in self._aeads[:keys]:
            try:
                return aead.decrypt(nonce, ciphertext, _place(tenant, connector_id)).decode()
            except InvalidTag:
                continue
        return None


def _aead(fernet_key: str) -> AESGCM:
    # The setting's Fernet keys stay the keys an operator handles; the AES-GCM key is
    # derived from one, so rotation and the development key work as before.
    secret = base64.urlsafe_b64decode(fernet_key.strip().encode())
    derived = HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO).derive(secret)
    return AESGCM(derived)


def _place(tenant: str, connector_id: str) -> bytes:
    # JSON keeps the two apart whatever they hold ("a", "b:c" is not "a:b", "c").
    return json.dumps([tenant, connector_id]).encode()


def _bytes(raw: bytes | str) -> bytes:
    return raw if isinstance(raw, bytes) else raw.encode()


def new_key() -> str:
    return Fernet.generate_key().decode()


def keys_from(configured: str | None, dev_key_file: Path) -> list[str]:
    """The keys of ``PREFSYNC_SECRET_KEYS``, or else the development key of this user."""
    if configured and configured.strip():
        return [key for key in configured.split(",") if key.strip()]
    return [_dev_key(dev_key_file)]


def _dev_key(path: Path) -> str:
    if path.exists():
        # Anyone who can read the key opens every config sealed with it.
        if path.stat().st_mode & 0o077:
            raise InvalidSettings(
                f"PREFSYNC_DEV_KEY_FILE {path} is readable by group or others: "
                f"run `chmod 600 {path}` (or set PREFSYNC_SECRET_KEYS)"
            )
        key = path.read_text().strip()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = new_key()
        # O_EXCL: two processes starting at once keep the first key written.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = path.read_text().strip()
        else:
            with os.fdopen(fd, "w") as out:
                out.write(key + "\n")
    log.warning(
        "PREFSYNC_SECRET_KEYS is not set: connector configs are sealed with a development "
        "key kept in a local file; set PREFSYNC_SECRET_KEYS in production",
        dev_key_file=str(path),
    )
    return key
