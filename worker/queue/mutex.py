"""kombu's Redis mutex (the one that lets one worker at a time restore unacknowledged
messages) without Lua.

kombu takes it with redis-py's lock, which releases by EVALSHA of a script it loads with
SCRIPT LOAD: the worker's Redis user may run neither (worker.infra.redis_acl), since
together they run any code. The same mutex here: taken with SET NX PX, released with a
transaction that deletes it only while it still holds this holder's token (WATCH), so a
mutex that expired and was taken by another worker is left to it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis
from kombu.transport import redis as kombu_redis


@contextmanager
def mutex(client: Any, name: str, expire: float) -> Iterator[None]:
    """Hold ``name`` for at most ``expire`` seconds; kombu's MutexHeld if another does."""
    token = uuid.uuid4().hex
    try:
        taken = client.set(name, token, nx=True, px=int(expire * 1000))
    except redis.exceptions.NoPermissionError:
        # A user that may not take it (Flower's) restores nobody's messages: the workers do.
        raise kombu_redis.MutexHeld() from None
    if not taken:
        raise kombu_redis.MutexHeld()
    try:
        yield
    finally:
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(name)
                if pipe.get(name) == token.encode():
                    pipe.multi()
                    pipe.delete(name)
                    pipe.execute()
            except redis.exceptions.WatchError:
                pass  # expired and taken meanwhile: the other holder's now


def restore_without_lua() -> None:
    """Make kombu's Redis transport use ``mutex``."""
    kombu_redis.Mutex = mutex
