"""Connecting to the Redis of PREFSYNC_REDIS_URL: a plain redis:// URL, or Sentinels."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.sentinel import Sentinel

from worker.infra.settings import Settings

#: How to ask a Sentinel for the master (ours and kombu's): one try each, so a Sentinel
#: that is down costs a refused connection, not redis-py's default seconds of retrying,
#: before the next one is asked. ``retry: None`` is redis-py's "no retry" for a
#: connection; unlike a ``Retry`` object it is plain data, which the worker's ``stats``
#: (Flower, `celery inspect stats`) serialises with the broker's transport options.
SENTINEL_KWARGS: dict[str, Any] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "retry": None,
}


class RedisClock:
    """Redis's clock (``TIME``): the one clock every process shares, whatever its own says.

    Read at most once per ``refresh`` seconds and carried forward on the local monotonic
    clock in between, so it costs no round trip per event. When Redis cannot be asked,
    the local clock stands in (the worker checks again with Redis's).
    """

    def __init__(self, client: redis.Redis, refresh: float = 30.0) -> None:
        self.client = client
        self.refresh = refresh
        self._read: tuple[float, float] | None = None  # (Redis time, monotonic) when read

    def now(self) -> float:
        """Seconds since the epoch, by Redis."""
        mono = time.monotonic()
        if self._read is None or mono - self._read[1] > self.refresh:
            try:
                seconds, microseconds = self.client.time()
            except redis.RedisError:
                if self._read is None:
                    return time.time()
                # Carry the last reading on; ask again only after another ``refresh``,
                # so an outage costs one failed call per refresh, not one per reading.
                self._read = (self._read[0] + mono - self._read[1], mono)
            else:
                self._read = (seconds + microseconds / 1e6, time.monotonic())
        return self._read[0] + time.monotonic() - self._read[1]


def connect(settings: Settings, **options: Any) -> redis.Redis:
    """A client for PREFSYNC_REDIS_URL, the same Redis Celery uses as its broker.

    ``sentinel://[:password@]host:port[;sentinel://host:port…][/db]`` asks those Sentinels
    for the current master of ``PREFSYNC_REDIS_SENTINEL_MASTER`` (as kombu does for the
    broker), so a failover moves our data and the queue together.
    """
    options = {
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 25,
        **settings.tls_options(),
        **options,
    }
    if not settings.redis_url.startswith("sentinel://"):
        if settings.uses_tls and settings.redis_url.startswith("redis://"):
            options["connection_class"] = redis.SSLConnection
        return redis.Redis.from_url(settings.redis_url, **options)
    if settings.uses_tls:
        options["ssl"] = True
    parts = [urlsplit(url) for url in settings.redis_url.split(";")]
    sentinels = [(part.hostname or "localhost", part.port or 26379) for part in parts]
    first, last = parts[0], parts[-1]
    db = int(last.path.strip("/") or 0)
    sentinel_kwargs = {**SENTINEL_KWARGS, **settings.tls_options()}
    if settings.uses_tls:
        sentinel_kwargs["ssl"] = True
    sentinel = Sentinel(
        sentinels, sentinel_kwargs=sentinel_kwargs, password=first.password, db=db, **options
    )
    return sentinel.master_for(settings.redis_sentinel_master)


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z0-9+.-]+://)(?P<userinfo>[^/;?#]*)@", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)[^&;]*", re.IGNORECASE)


def redacted_url(url: str) -> str:
    """``url`` as it may be shown or logged: any password replaced by ``***``."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        # Without a colon the whole user info may be the password (redis://secret@host).
        return f"{match['scheme']}{user + colon if colon else ''}***@"

    return _QUERY_PASSWORD.sub(r"\g<key>***", _URL_PASSWORD.sub(userinfo, url))


_UNKNOWN_HOST = ("Name or service not known", "nodename nor servname", "name resolution")


def problem(url: str, exc: redis.exceptions.RedisError) -> str | None:
    """What is wrong with PREFSYNC_REDIS_URL when Redis answers but refuses us, or its host
    does not exist; None when nothing answers (the caller says so)."""
    where = redacted_url(url)
    text = str(exc)
    if isinstance(exc, redis.exceptions.AuthenticationError) or "NOAUTH" in text:
        given = any(urlsplit(part).password for part in url.split(";"))
        why = "the password is wrong" if given else "it needs a password and none was given"
        return (
            f"Redis at {where} refused the connection: {why} (the password in PREFSYNC_REDIS_URL)"
        )
    if isinstance(exc, redis.exceptions.ResponseError) and "DB index" in text:
        db = urlsplit(url.split(";")[-1]).path.strip("/") or "0"
        return (
            f"Redis at {where} has no database {db} (the /{db} of PREFSYNC_REDIS_URL must be "
            "below the server's `databases` setting, 16 by default)"
        )
    if "certificate verify failed" in text:
        return (
            f"Redis at {where} answered with a TLS certificate that is not trusted: set "
            "PREFSYNC_REDIS_TLS_CA_FILE to the CA bundle that signed it (certificate verify "
            "failed)"
        )
    if isinstance(exc, redis.exceptions.ConnectionError) and any(
        marker in text for marker in _UNKNOWN_HOST
    ):
        hosts = ", ".join(urlsplit(part).hostname or "?" for part in url.split(";"))
        return f"unknown host in PREFSYNC_REDIS_URL: {hosts} (no such name in DNS or /etc/hosts)"
    return None
