"""Pacing: one rate limit per destination account, shared by every worker through Redis.

A destination counts calls per account (a Brevo API key, a Braze workspace), whichever
worker makes them, so the limit lives in Redis: a GCRA bucket per account holding the time
of its next free slot. Slots are evenly spread, with no burst, which is what keeps a
per-second window (Brevo's) from seeing an eleventh call.

A caller reserves its slot and sleeps until it. Asking when the next slot is free, sleeping
that long and asking again would put every call after its slot by the sleep overshoot, a
Redis round trip and the race with other workers for it, and a bucket without burst never
gives that time back. Reserved slots stay exactly one interval apart whenever they are
asked for: a call's lateness is its own and is not carried into the next slots. A catch-up
tolerance would give lost time back too, but lets calls bunch: with a tolerance of c
seconds, 11 calls fit into 1 - c.

Slots are ``(1 + MARGIN) / rate`` apart rather than ``1 / rate``. A call reaches the
destination a little after its slot (sleep overshoot, the HTTP call on its way). With slots
exactly ``1 / rate`` apart, a call later than the one ``rate`` slots after it would share a
second with ``rate`` others, which happens all the time by fractions of a millisecond, and
now and then inside one of Brevo's fixed windows. With the margin, ``rate`` slots span
``1 + MARGIN`` seconds, so a call may arrive up to MARGIN late. A call that wakes more than
half of that late leaves its slot unused and reserves another one: the other half is for the
HTTP call on its way. That half is all the way there gets: a call held up longer (once in
2,000 calls in the benchmark: 52 ms, on a busy host) puts ``rate + 1`` calls into a sliding
second for as long as it was later than MARGIN (0.8 ms then), and a fixed window catches
that only if its edge falls within that time. A larger margin would not close this (the way
has no upper bound) and would cost rate: this one costs ``MARGIN / (1 + MARGIN)`` of it.

A caller reserves only a slot within the sleep it has left: a slot further away is not
reserved (a deferred batch must not hold a slot it would leave empty), and the caller
defers. A batch's first call takes only the account's next slot (at most one interval
away): while another batch sleeps for the slots before, it defers at once, so a backlog
holds one worker process asleep per account rather than every process.

When a destination's rate-limit headers say its quota is nearly spent (another client
shares the account, or the limit is lower than configured), ``slow_down`` pushes the next
free slot out so the calls left are spread until the window resets. Slots reserved before
it still go: at most one per worker process, each at most its sleep budget away.

Not when the reset is within a second, though, unless the call was refused. The headers
give the reset in whole seconds, so such a reset may be a moment away or a full second. At
the configured rate our own calls spend a per-second window (Brevo's) to its last call or
so every second, and spreading the calls left over a second that was mostly already over
held the account half a second every other second: a fifth of the rate (the benchmark's
8 calls a second at 10). That window is the one pacing keeps by itself; only a 429 tells
that someone else spent it.

Time is Redis's clock (worker.core.retries.clock, as for the retry schedule), so workers on hosts
whose clocks disagree still agree on every slot: a host 2 s fast would otherwise see every
slot as free and take them all.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

import redis

from worker.connectors.base import BaseTransport, HttpRequest, HttpResponse, Quota
from worker.core.errors import Deferred
from worker.core.retries import clock
from worker.records.scripts import Scripts

# Seconds per second of slots kept free for calls arriving late (see above).
MARGIN = 0.05

# The finest reset the rate-limit headers give, in seconds (see above).
GRAIN = 1.0

# Below this share of its quota left, a destination's headers slow us down.
NEARLY_SPENT = 0.1


def account_key(type_id: str, credential: str) -> str:
    """The bucket of one destination account. The credential names the account; only a
    digest of it is ever written to Redis."""
    digest = hashlib.sha256(credential.encode()).hexdigest()[:24]
    return f"prefsync:pace:{type_id}:{digest}"


class Slot(NamedTuple):
    taken: bool  # False: it was further away than the caller would wait, and is not reserved
    at: float  # on the workers' clock


class Pacer:
    def __init__(self, client: redis.Redis, max_hold: float) -> None:
        # A reset hours away (Brevo's hourly quota, a garbled header) must not stall an
        # account's consent changes that long: hold at most this, then ask again.
        self.max_hold = max_hold
        # lua/pace_take.lua reserves a slot, lua/pace_hold.lua pushes the next one out.
        self.scripts = Scripts(client)

    def take(self, bucket: str, rate: float, within: float) -> Slot:
        """Reserve the next free slot for one call if it is at most ``within`` seconds
        away. ``rate`` is in calls per second."""
        taken, at = self.scripts.run("pace_take", [bucket], [clock(), (1 + MARGIN) / rate, within])
        return Slot(taken == 1, float(at))

    def slow_down(self, bucket: str, quota: Quota, *, refused: bool) -> None:
        """Spread the calls a nearly spent quota has left until its window resets.
        ``refused``: the answer reporting it was a 429."""
        if quota.remaining > (quota.limit or 0) * NEARLY_SPENT:
            return
        if quota.reset_in <= GRAIN and not refused:
            return
        hold = quota.reset_in / (max(quota.remaining, 0) + 1)
        self.scripts.run("pace_hold", [bucket], [clock(), min(hold, self.max_hold)])


class PacedTransport(BaseTransport):
    """Sends each call through ``inner`` (the shared HTTP transport) in a slot reserved in
    ``bucket``, and heeds the quota each answer reports. One serves one batch, and sleeps
    up to ``max_sleep`` seconds in all for its calls' slots: a longer wait defers the rest
    of the batch rather than hold a worker process (a batch of 100 Brevo users would hold
    it ten seconds)."""

    def __init__(
        self,
        inner: BaseTransport,
        pacer: Pacer,
        bucket: str,
        rate: float,
        quota: Callable[[Mapping[str, str]], Quota | None],
        max_sleep: float,
    ) -> None:
        self.inner = inner
        self.pacer = pacer
        self.bucket = bucket
        self.rate = rate
        self.quota = quota
        self.max_sleep = max_sleep
        self.slept = 0.0
        self.sent = 0

    def send(self, request: HttpRequest) -> HttpResponse:
        self._wait_for_slot()
        self.sent += 1
        response = self.inner.send(request)
        quota = self.quota(response.headers)
        if quota is not None:
            self.pacer.slow_down(self.bucket, quota, refused=response.status == 429)
        return response

    def _wait_for_slot(self) -> None:
        while True:
            # A sleep's overshoot may pass the budget: a free slot is still taken then.
            within = max(self.max_sleep - self.slept, 0)
            if not self.sent:
                # A batch starts sleeping only for a slot no other batch waits before: a
                # backlog of an account then holds one worker process asleep, not every
                # one (docs/delivery.md, "Lanes"); the others defer until it is through.
                within = min(within, (1 + MARGIN) / self.rate)
            slot = self.pacer.take(self.bucket, self.rate, within)
            if not slot.taken:
                wait = max(slot.at - clock(), 0.0)
                raise Deferred(f"paced: next call to this account in {wait:.2f}s", wait=wait)
            if (wait := slot.at - clock()) > 0:
                started = time.monotonic()
                time.sleep(wait)
                self.slept += time.monotonic() - started
            # Any later, the call could share a second with the ``rate`` calls after it.
            if clock() - slot.at <= MARGIN / 2:
                return
