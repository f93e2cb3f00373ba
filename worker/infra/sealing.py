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

Fernet (the ``cryptography`` package) is AES-128-CBC with an HMAC-SHA256: authenticated,
so a tampered value is refused rather than read wrongly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import structlog
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from worker.infra.settings import InvalidSettings

log = structlog.get_logger("prefsync.sealing")

#: What a sealed value starts with; a value without it is the older plain JSON.
PREFIX = b"fernet:"


class SealingError(Exception):
    """A stored value cannot be opened: sealed under a key not in PREFSYNC_SECRET_KEYS, or
    altered."""


class Sealer:
    def __init__(self, keys: Sequence[str]) -> None:
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

    def seal(self, text: str) -> bytes:
        return PREFIX + self._multi.encrypt(text.encode())

    def open(self, raw: bytes | str) -> str:
        """The text of a stored value, sealed or (stored before sealing) plain."""
        data = raw if isinstance(raw, bytes) else raw.encode()
        if not data.startswith(PREFIX):
            # Not UTF-8 cannot be JSON either: the caller says so.
            return data.decode(errors="replace")
        try:
            return self._multi.decrypt(data[len(PREFIX) :]).decode()
        except InvalidToken:
            raise SealingError(
                "sealed under a key that is not in PREFSYNC_SECRET_KEYS, or altered"
            ) from None

    def is_current(self, raw: bytes | str) -> bool:
        """Whether a stored value is sealed under the first key (nothing to re-encrypt)."""
        data = raw if isinstance(raw, bytes) else raw.encode()
        if not data.startswith(PREFIX):
            return False
        try:
            self._fernets[0].decrypt(data[len(PREFIX) :])
        except InvalidToken:
            return False
        return True


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
