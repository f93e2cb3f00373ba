"""The retry schedule: when the next attempt of a failed delivery runs.

Attempts land at fixed offsets from the *first* attempt (the cumulative sums of
``PREFSYNC_RETRY_COUNTDOWNS``: 10, 40, 100, 190, 300 s by default), so slow attempts cannot
push the last retry out of the five-minute window. Jitter only ever moves an attempt
earlier (by up to ``jitter`` times that step), which spreads a burst of failures without
leaving the window. A destination's rate-limit reset can push an attempt later, never
earlier.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from itertools import accumulate

_now: Callable[[], float] = time.time


def clock() -> float:
    """Seconds since the epoch, on the one clock every process shares: Redis's, once the
    process has a runtime (worker.delivery.runtime follows its RedisClock: read every 30 s, carried
    on the monotonic clock in between), the local clock before that. Retry schedules and
    pacing slots are computed on it, so a host whose clock is off (by 2 s, by 300 s) takes
    no more than its share of a rate limit and does not shorten a retry schedule. One
    place to freeze in tests."""
    return _now()


def follow(now: Callable[[], float]) -> None:
    """Make ``clock`` read ``now`` (the runtime's RedisClock)."""
    global _now
    _now = now


def retry_countdown(
    *,
    retries_done: int,
    first_attempt_at: float,
    now: float,
    countdowns: tuple[float, ...],
    jitter: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds from ``now`` until retry number ``retries_done + 1`` should run."""
    offsets = list(accumulate(countdowns))
    step = countdowns[retries_done]
    early = (rng or random).uniform(0, jitter * step)
    countdown = max(0.0, first_attempt_at + offsets[retries_done] - early - now)
    if retry_after is not None:
        countdown = max(countdown, retry_after)
    return countdown
