"""Ingress credentials: per-tenant client ids and secrets, and the access tokens issued
for them (OAuth2 client credentials, RFC 6749 §4.4).

Only a SHA-256 of each secret is stored. That is enough here, unlike for a person's
password: a secret is 256 random bits made by ``secrets``, so nothing can be guessed from
its hash, and checking one costs a microsecond instead of a slow KDF's tens of milliseconds
on every webhook.

An access token is not stored at all, so issuing one writes nothing to Redis (the ingress's
Redis user may not write a credential): it says which client and tenant it is for and
until when, signed (HMAC-SHA256) with a key made of ``PREFSYNC_INGRESS_TOKEN_KEY`` and the
credential's secret hash. A check verifies the signature and the expiry and reads the
credential: a revoked credential's tokens are refused as soon as a check reads Redis again
(``CheckCache``), and a credential made again has another secret, so another key.

Redis keys:
    prefsync:ingress:clients          client id -> {"tenant", "secret_sha256", "created_at"}
    prefsync:ingress:token:<sha256>   client id: a token of the release before, still read
                                      until it expires (PREFSYNC_INGRESS_TOKEN_TTL)
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

CLIENTS = "prefsync:ingress:clients"
TOKEN_PREFIX = "prefsync:ingress:token:"

# Prefixes say what a string is when it turns up somewhere (a log, a ticket), as
# GitHub's ghp_ tokens do; the secret scanner of the tests looks for them.
CLIENT_ID_PREFIX = "psc_"
SECRET_PREFIX = "pss_"
TOKEN_PREFIX_TEXT = "pst_"


@dataclass(frozen=True, slots=True)
class Client:
    """A credential as stored: never its secret."""

    client_id: str
    tenant: str
    created_at: float


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


class CredentialStore:
    def __init__(self, client: redis.Redis, token_ttl: int, token_key: bytes = b"") -> None:
        self.redis = client
        self.token_ttl = token_ttl
        self.token_key = token_key

    def add(self, tenant: str) -> tuple[Client, str]:
        """A new credential for ``tenant``: the client and its secret, which is not kept
        and cannot be shown again."""
        client = Client(CLIENT_ID_PREFIX + secrets.token_hex(8), tenant, time.time())
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        record = {
            "tenant": tenant,
            "secret_sha256": _digest(secret),
            "created_at": client.created_at,
        }
        self.redis.hset(CLIENTS, client.client_id, json.dumps(record))
        return client, secret

    def list(self, tenant: str) -> list[Client]:
        """``tenant``'s credentials, oldest first."""
        clients = [
            _client(client_id.decode(), json.loads(raw))
            for client_id, raw in self.redis.hgetall(CLIENTS).items()
        ]
        return sorted((c for c in clients if c.tenant == tenant), key=lambda c: c.created_at)

    def revoke(self, tenant: str, client_id: str) -> bool:
        """Delete ``tenant``'s credential ``client_id``; its tokens die with it (each is
        checked against the credential). False if the tenant has no such credential."""
        found = self.client(client_id)
        if found is None or found.tenant != tenant:
            return False
        return bool(self.redis.hdel(CLIENTS, client_id))

    def client(self, client_id: str) -> Client | None:
        raw = self.redis.hget(CLIENTS, client_id)
        return None if raw is None else _client(client_id, json.loads(raw))

    def check_secret(self, client_id: str, secret: str) -> Client | None:
        """The client, if ``secret`` is its secret."""
        record = self._record(client_id)
        if record is None or not hmac.compare_digest(record["secret_sha256"], _digest(secret)):
            return None
        return _client(client_id, record)

    def issue_token(self, client: Client, now: float | None = None) -> str:
        """A bearer token for ``client`` (as ``check_secret`` found it), valid
        ``token_ttl`` seconds; nothing is written."""
        # Revoked since its secret was checked (a cached check): a token no check accepts.
        record = self._record(client.client_id) or {"secret_sha256": secrets.token_hex(32)}
        expires = int((time.time() if now is None else now) + self.token_ttl)
        claims = {"c": client.client_id, "t": client.tenant, "x": expires}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{TOKEN_PREFIX_TEXT}{body}.{self._sign(record, body)}"

    def check_token(self, token: str, now: float | None = None) -> Client | None:
        """The client a live token was issued to, if that credential still exists."""
        body, dot, signature = token.removeprefix(TOKEN_PREFIX_TEXT).partition(".")
        if not dot:
            return self._check_stored_token(token)
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            client_id, tenant, expires = str(claims["c"]), claims["t"], float(claims["x"])
        except (ValueError, TypeError, KeyError):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        record = self._record(client_id)
        if record is None or record["tenant"] != tenant:
            return None
        if not hmac.compare_digest(self._sign(record, body), signature):
            return None
        return _client(client_id, record)

    def _check_stored_token(self, token: str) -> Client | None:
        # A token the release before stored (its hash), live until it expires.
        client_id = self.redis.get(TOKEN_PREFIX + _digest(token))
        return None if client_id is None else self.client(client_id.decode())

    def _record(self, client_id: str) -> dict | None:
        raw = self.redis.hget(CLIENTS, client_id)
        return None if raw is None else json.loads(raw)

    def _sign(self, record: dict, body: str) -> str:
        # The credential's own key: the secret's hash, bound to the deployment's token key.
        key = hmac.new(self.token_key, record["secret_sha256"].encode(), "sha256").digest()
        return _b64(hmac.new(key, body.encode(), "sha256").digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _client(client_id: str, record: dict) -> Client:
    return Client(client_id, record["tenant"], float(record["created_at"]))


class CheckCache:
    """Answers of credential checks, kept ``ttl`` seconds (refusals too, so that a caller
    with a bad credential costs Redis one read a period, however fast it calls).

    Keyed by a digest of the whole presented credential, never by the credential itself.
    The ingress checks a credential on every webhook; at thousands a second, this saves a
    Redis round trip on nearly all of them. A revocation takes up to ``ttl`` to apply."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._entries: dict[str, tuple[float, Client | None]] = {}

    def get(self, presented: str) -> tuple[bool, Client | None]:
        """(found, client): found is False when the answer must be read from Redis."""
        entry = self._entries.get(_digest(presented))
        if entry is None or entry[0] <= self.clock():
            return False, None
        return True, entry[1]

    def put(self, presented: str, client: Client | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:  # a flood of made-up credentials
            self._entries.clear()
        self._entries[_digest(presented)] = (self.clock() + self.ttl, client)
