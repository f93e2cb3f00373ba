"""Connecting to the Redis of PREFSYNC_REDIS_URL: a plain redis:// URL, or Sentinels."""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from worker.settings import Settings

#: How to ask a Sentinel for the master (ours and kombu's): one try each, no backoff, so a
#: Sentinel that is down costs a refused connection, not redis-py's default seconds of
#: retrying, before the next one is asked.
SENTINEL_KWARGS: dict[str, Any] = {
    "socket_connect_timeout": 1,
    "socket_timeout": 1,
    "retry": Retry(NoBackoff(), 0),
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
