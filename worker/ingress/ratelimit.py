"""How many access tokens a client id is issued per minute, across every ingress process.

A PMP needs one token per lifetime (PREFSYNC_INGRESS_TOKEN_TTL); the limit leaves room for
restarts and retries, no more. Tokens are signed, not stored, but each one issued is a
valid credential for its lifetime and costs a credential check: a leaked secret must not
be able to mint them without end.

Redis key:
    prefsync:ingress:token-rate:<client id>   tokens issued in the current minute, expiring
                                              with it
"""

from __future__ import annotations

import redis

WINDOW_SECONDS = 60
KEY_PREFIX = "prefsync:ingress:token-rate:"


class TokenRateLimit:
    def __init__(self, client: redis.Redis, per_minute: int) -> None:
        self.redis = client
        self.per_minute = per_minute

    def wait(self, client_id: str) -> int:
        """Count one issuance for ``client_id``: 0 when it may have its token, else the
        seconds until its minute ends (for Retry-After)."""
        key = KEY_PREFIX + client_id
        # One round trip: the window starts with the first issuance and ends a minute on.
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(key, 0, ex=WINDOW_SECONDS, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, issued, ttl = pipe.execute()
        if issued <= self.per_minute:
            return 0
        return max(int(ttl), 1)
