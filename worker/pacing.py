"""Pacing: one rate limit per destination account, shared by every worker through Redis.

A destination counts calls per account (a Brevo API key, a Braze workspace), whichever
worker makes them, so the limit lives in Redis: a GCRA bucket per account. Each call takes
a slot ``1/rate`` seconds after the previous one, with no burst: the calls are evenly
spread, which is what keeps a per-second window (Brevo's) from ever seeing an eleventh.

When a destination's rate-limit headers say its quota is nearly spent (another client
shares the account, or the limit is lower than configured), ``slow_down`` pushes the next
slot out so the calls left are spread until the window resets.

Time is the workers' clock (worker.retries.clock, as for the retry schedule): hosts kept in
step by NTP agree to the millisecond, well under a slot.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping

import redis

from worker.connectors.base import HttpRequest, HttpResponse, Quota, Transport
from worker.errors import Deferred
from worker.retries import clock

# Returns 0 and takes the slot, or the seconds until one is free (and takes nothing).
_TAKE = """
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat > now then return tostring(tat - now) end
local next_tat = now + interval
redis.call('SET', KEYS[1], string.format('%.6f', next_tat),
           'PX', math.ceil((next_tat - now) * 1000) + 1000)
return '0'
"""

# Moves the next free slot to at least ``now + ARGV[2]`` seconds.
_HOLD = """
local now = tonumber(ARGV[1])
local until_at = now + tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if until_at > tat then
  redis.call('SET', KEYS[1], string.format('%.6f', until_at),
             'PX', math.ceil((until_at - now) * 1000) + 1000)
end
return 1
"""

# Below this share of its quota left, a destination's headers slow us down.
NEARLY_SPENT = 0.1


def account_key(type_id: str, credential: str) -> str:
    """The bucket of one destination account. The credential names the account; only a
    digest of it is ever written to Redis."""
    digest = hashlib.sha256(credential.encode()).hexdigest()[:24]
    return f"prefsync:pace:{type_id}:{digest}"


class Pacer:
    def __init__(self, client: redis.Redis, max_hold: float) -> None:
        # A reset hours away (Brevo's hourly quota, a garbled header) must not stall an
        # account's consent changes that long: hold at most this, then ask again.
        self.max_hold = max_hold
        self._take = client.register_script(_TAKE)
        self._hold = client.register_script(_HOLD)

    def take(self, bucket: str, rate: float) -> float:
        """Take the next call's slot: 0.0 when taken, else the seconds to wait before
        asking again (nothing is taken then). ``rate`` is in calls per second."""
        wait = self._take(keys=[bucket], args=[clock(), 1.0 / rate])
        return float(wait)

    def slow_down(self, bucket: str, quota: Quota) -> None:
        """Spread the calls a nearly spent quota has left until its window resets."""
        if quota.remaining > (quota.limit or 0) * NEARLY_SPENT:
            return
        hold = quota.reset_in / (max(quota.remaining, 0) + 1)
        self._hold(keys=[bucket], args=[clock(), min(hold, self.max_hold)])


class PacedTransport(Transport):
    """The shared transport, taking each call's slot in ``bucket`` first and heeding the
    quota each answer reports. One serves one batch, and sleeps up to ``max_sleep``
    seconds in all for its calls' slots: a longer wait defers the rest of the batch rather
    than hold a worker process (a batch of 100 Brevo users would hold it ten seconds)."""

    def __init__(
        self,
        inner: Transport,
        pacer: Pacer,
        bucket: str,
        rate: float,
        quota: Callable[[Mapping[str, str]], Quota | None],
        max_sleep: float,
    ) -> None:
        super().__init__(inner.timeout, inner.session)
        self.pacer = pacer
        self.bucket = bucket
        self.rate = rate
        self.quota = quota
        self.max_sleep = max_sleep
        self.slept = 0.0

    def send(self, request: HttpRequest) -> HttpResponse:
        while (wait := self.pacer.take(self.bucket, self.rate)) > 0:
            if self.slept + wait > self.max_sleep:
                raise Deferred(f"paced: next call to this account in {wait:.2f}s", wait=wait)
            started = time.monotonic()
            time.sleep(wait)
            self.slept += time.monotonic() - started
        response = super().send(request)
        quota = self.quota(response.headers)
        if quota is not None:
            self.pacer.slow_down(self.bucket, quota)
        return response
