"""The retry schedule: attempts at fixed offsets from the first, inside five minutes."""

import random
from itertools import accumulate

import pytest

from worker.core.retries import retry_countdown
from worker.infra.settings import DEFAULT_RETRY_COUNTDOWNS, Settings

OFFSETS = list(accumulate(DEFAULT_RETRY_COUNTDOWNS))


def schedule(*, lateness: float = 0.0, jitter: float = 0.1, seed: int = 1) -> list[float]:
    """Offsets (from the first attempt) at which each retry runs, when every attempt
    starts ``lateness`` seconds after the moment it was due."""
    rng = random.Random(seed)
    first, now, times = 1000.0, 1000.0, []
    for retries_done in range(len(DEFAULT_RETRY_COUNTDOWNS)):
        now += lateness  # the attempt itself takes this long before it fails
        now += retry_countdown(
            retries_done=retries_done,
            first_attempt_at=first,
            now=now,
            countdowns=DEFAULT_RETRY_COUNTDOWNS,
            jitter=jitter,
            rng=rng,
        )
        times.append(now - first)
    return times


def test_default_schedule_has_five_retries_inside_five_minutes():
    assert OFFSETS == [10, 40, 100, 190, 300]
    for seed in range(50):
        offsets = schedule(seed=seed)
        assert len(offsets) == 5
        for offset, target, step in zip(offsets, OFFSETS, DEFAULT_RETRY_COUNTDOWNS, strict=True):
            assert target - 0.1 * step <= offset <= target
        assert offsets[-1] <= 300


def test_slow_attempts_do_not_push_the_last_retry_out_of_the_window():
    # Each attempt spends 8 s (a slow destination timing out) before it fails; aimed at
    # offsets from the first attempt, the retries still land on their offsets.
    assert schedule(lateness=8.0, jitter=0.0) == pytest.approx(OFFSETS)


def test_without_jitter_attempts_land_exactly_on_their_offsets():
    assert schedule(jitter=0.0) == pytest.approx(OFFSETS)


def test_rate_limit_reset_pushes_a_retry_later_never_earlier():
    base = dict(retries_done=0, first_attempt_at=0.0, now=1.0, countdowns=(10.0,), jitter=0.0)
    assert retry_countdown(**base, retry_after=30.0) == 30.0
    assert retry_countdown(**base, retry_after=2.0) == 9.0


def test_countdown_is_never_negative_when_an_attempt_ran_very_late():
    assert (
        retry_countdown(
            retries_done=0, first_attempt_at=0.0, now=500.0, countdowns=(10.0,), jitter=0.0
        )
        == 0.0
    )


def test_countdowns_are_read_comma_separated_from_the_environment(monkeypatch):
    monkeypatch.setenv("PREFSYNC_RETRY_COUNTDOWNS", "0.1,0.3, 0.6,0.9,1.1")
    monkeypatch.setenv("PREFSYNC_ALLOW_HOSTS", "127.0.0.1:8080, LocalHost:9")
    settings = Settings()
    assert settings.retry_countdowns == (0.1, 0.3, 0.6, 0.9, 1.1)
    assert settings.allow_hosts == ("127.0.0.1:8080", "localhost:9")


def test_visibility_timeout_shorter_than_a_retry_wait_is_refused_at_start_up(monkeypatch):
    monkeypatch.setenv("PREFSYNC_VISIBILITY_TIMEOUT", "100")
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings()
