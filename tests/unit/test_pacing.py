"""The shared rate limiter (worker.pacing), on fakeredis with Redis's own clock."""

from __future__ import annotations

import time

import fakeredis
import pytest
import responses
from pydantic import ValidationError

from worker.connectors.base import HttpRequest, Quota, Transport
from worker.errors import Deferred
from worker.pacing import PacedTransport, Pacer, account_key
from worker.settings import Settings

BUCKET = account_key("sendinblue", "xkeysib-TESTKEY-0123456789abcdef")


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def pacer(server: fakeredis.FakeServer, max_hold: float = 60.0) -> Pacer:
    return Pacer(fakeredis.FakeRedis(server=server), max_hold=max_hold)


def test_the_second_call_within_the_interval_is_told_how_long_to_wait(server) -> None:
    p = pacer(server)
    assert p.take(BUCKET, rate=10) == 0.0
    wait = p.take(BUCKET, rate=10)
    assert 0.05 < wait <= 0.1
    time.sleep(wait)
    assert p.take(BUCKET, rate=10) == 0.0


def test_calls_paced_by_two_workers_never_exceed_the_rate(server) -> None:
    workers = [pacer(server), pacer(server)]  # two processes, one Redis
    rate, granted = 100.0, 0
    started = time.monotonic()
    while time.monotonic() - started < 0.3:
        for p in workers:
            wait = p.take(BUCKET, rate=rate)
            if wait == 0.0:
                granted += 1
            else:
                time.sleep(min(wait, 0.005))
    elapsed = time.monotonic() - started
    assert granted <= rate * elapsed + 1
    assert granted >= 0.7 * rate * elapsed  # and the rate is nearly reached


def test_accounts_are_paced_apart_and_their_key_never_holds_the_credential(server) -> None:
    p = pacer(server)
    other = account_key("sendinblue", "xkeysib-OTHERKEY-0123456789abcdef")
    assert other != BUCKET
    assert p.take(BUCKET, rate=1) == 0.0
    assert p.take(other, rate=1) == 0.0
    keys = [k.decode() for k in fakeredis.FakeRedis(server=server).scan_iter()]
    assert sorted(keys) == sorted([BUCKET, other])
    assert all("KEY" not in k for k in keys)


@pytest.mark.parametrize(
    ("quota", "low", "high"),
    [
        (Quota(limit=100, remaining=0, reset_in=2.0), 1.9, 2.0),  # spent: wait for the reset
        (Quota(limit=100, remaining=3, reset_in=4.0), 0.9, 1.0),  # 3 left: one per second
        (Quota(limit=None, remaining=0, reset_in=1.0), 0.9, 1.0),
    ],
)
def test_a_nearly_spent_quota_spreads_the_calls_left_until_the_reset(
    server, quota: Quota, low: float, high: float
) -> None:
    p = pacer(server)
    p.slow_down(BUCKET, quota)
    assert low < p.take(BUCKET, rate=1000) <= high


@pytest.mark.parametrize(
    "quota", [Quota(limit=100, remaining=50, reset_in=2.0), Quota(None, remaining=5, reset_in=9)]
)
def test_a_quota_with_room_left_changes_nothing(server, quota: Quota) -> None:
    p = pacer(server)
    p.slow_down(BUCKET, quota)
    assert p.take(BUCKET, rate=1000) == 0.0


def test_a_reset_far_away_holds_the_account_no_longer_than_the_maximum(server) -> None:
    p = pacer(server, max_hold=1.5)
    p.slow_down(BUCKET, Quota(limit=36000, remaining=0, reset_in=3600.0))
    assert 1.4 < p.take(BUCKET, rate=1000) <= 1.5


def test_rate_limits_are_read_by_connector_type_or_alias_and_unknown_names_refused() -> None:
    assert Settings(rate_limits={"brevo": 20, "Braze": 500}).rate_limits == {
        "sendinblue": 20.0,
        "braze": 500.0,
    }
    with pytest.raises(ValidationError, match="'mailchimp', which is not a connector type"):
        Settings(rate_limits={"mailchimp": 5})
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings(rate_limits={"braze": 0})


def test_one_batch_sleeps_at_most_its_budget_in_all_then_defers_the_rest(
    server, mocked: responses.RequestsMock
) -> None:
    mocked.post("https://api.example/call", status=204)
    transport = PacedTransport(
        Transport(timeout=1.0),
        pacer(server),
        BUCKET,
        rate=10,  # a slot every 0.1 s
        quota=lambda headers: None,
        max_sleep=0.25,
    )
    request = HttpRequest("POST", "https://api.example/call", {})
    started = time.monotonic()
    for _ in range(3):  # the first slot is free, the next two cost about 0.1 s each
        assert transport.send(request).status == 204
    with pytest.raises(Deferred) as deferred:
        transport.send(request)  # a third sleep would pass 0.25 s in all
    assert 0 < deferred.value.wait <= 0.1
    assert len(mocked.calls) == 3
    assert 0.15 < time.monotonic() - started < 0.25
    assert transport.slept <= 0.25
