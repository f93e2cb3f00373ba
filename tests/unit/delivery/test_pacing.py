"""The shared rate limiter (worker.delivery.pacing), on fakeredis; the workers' clock is faked
where a
test needs exact times."""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable
from itertools import pairwise
from types import SimpleNamespace

import fakeredis
import pytest
import responses
from pydantic import ValidationError

from worker.connectors.base import HttpRequest, Quota, Transport
from worker.core.errors import Deferred
from worker.delivery import pacing
from worker.delivery.pacing import MARGIN, PacedTransport, Pacer, account_key
from worker.delivery.runtime import rate_limits
from worker.infra.settings import InvalidSettings, Settings

BUCKET = account_key("sendinblue", "xkeysib-TESTKEY-0123456789abcdef")
SLOT = 1e-6  # slots are stored to the microsecond


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def pacer(server: fakeredis.FakeServer, max_hold: float = 60.0) -> Pacer:
    return Pacer(fakeredis.FakeRedis(server=server), max_hold=max_hold)


class FakeTime:
    """The workers' clock, moved only by sleeping; a sleep overshoots by the next of
    ``overshoots`` (then by nothing)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0
        self.overshoots: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + (self.overshoots.pop(0) if self.overshoots else 0.0)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(pacing, "clock", fake)
    monkeypatch.setattr(pacing, "time", SimpleNamespace(sleep=fake.sleep, monotonic=fake))
    return fake


def test_a_free_slot_is_taken_now_and_the_next_one_reserved_an_interval_later(
    server, fake_time: FakeTime
) -> None:
    p = pacer(server)
    first = p.take(BUCKET, rate=10, within=0.0)
    second = p.take(BUCKET, rate=10, within=1.0)
    assert first.taken and second.taken
    assert first.at == pytest.approx(fake_time.now, abs=SLOT)
    assert second.at - first.at == pytest.approx((1 + MARGIN) / 10, abs=SLOT)


def test_workers_racing_for_slots_each_get_their_own_an_interval_apart(
    server, fake_time: FakeTime
) -> None:
    workers = [pacer(server), pacer(server)]  # two processes, one Redis
    slots = [workers[n % 2].take(BUCKET, rate=10, within=2.0) for n in range(10)]
    assert all(slot.taken for slot in slots)
    gaps = [b.at - a.at for a, b in pairwise(slots)]
    assert gaps == pytest.approx([(1 + MARGIN) / 10] * 9, abs=2 * SLOT)


def test_a_slot_further_away_than_the_caller_would_wait_is_not_reserved(
    server, fake_time: FakeTime
) -> None:
    p = pacer(server)
    first = p.take(BUCKET, rate=10, within=0.0)
    refused = p.take(BUCKET, rate=10, within=0.05)
    assert not refused.taken
    assert refused.at - first.at == pytest.approx((1 + MARGIN) / 10, abs=SLOT)
    assert p.take(BUCKET, rate=10, within=1.0) == refused._replace(taken=True)


def test_calls_arriving_late_after_their_slots_never_put_more_than_the_rate_in_a_second(
    server, fake_time: FakeTime
) -> None:
    # Two workers each send a call in every slot they reserve, arriving up to 40 ms after
    # it (sleep overshoot on a loaded host, the HTTP call on its way), and ask for the next
    # slot once the answer is back.
    rate, calls, rng = 10, 600, random.Random(1)
    workers = [pacer(server), pacer(server)]
    asks = [(fake_time.now, 0), (fake_time.now, 1)]
    arrivals = []
    while len(arrivals) < calls:
        fake_time.now, worker = heapq.heappop(asks)
        slot = workers[worker].take(BUCKET, rate, within=0.5)
        assert slot.taken
        arrivals.append(slot.at + rng.uniform(0, 0.04))
        heapq.heappush(asks, (arrivals[-1] + rng.uniform(0, 0.02), worker))
    arrivals.sort()
    assert min(b - a for a, b in zip(arrivals, arrivals[rate:], strict=False)) >= 1.0
    assert (calls - 1) / (arrivals[-1] - arrivals[0]) >= 0.94 * rate


def test_accounts_are_paced_apart_and_their_key_never_holds_the_credential(server) -> None:
    p = pacer(server)
    other = account_key("sendinblue", "xkeysib-OTHERKEY-0123456789abcdef")
    assert other != BUCKET
    assert p.take(BUCKET, rate=1, within=0.0).taken
    assert p.take(other, rate=1, within=0.0).taken
    keys = [k.decode() for k in fakeredis.FakeRedis(server=server).scan_iter()]
    assert sorted(keys) == sorted([BUCKET, other])
    assert all("KEY" not in k for k in keys)


@pytest.mark.parametrize(
    ("quota", "refused", "hold"),
    [
        (Quota(limit=100, remaining=0, reset_in=2.0), False, 2.0),  # spent: wait for the reset
        (Quota(limit=100, remaining=3, reset_in=4.0), False, 1.0),  # 3 left: one per second
        (Quota(limit=None, remaining=0, reset_in=3.0), False, 3.0),
        (Quota(limit=10, remaining=0, reset_in=1.0), True, 1.0),  # a 429: someone spent it
    ],
)
def test_a_nearly_spent_quota_spreads_the_calls_left_until_the_reset(
    server, fake_time: FakeTime, quota: Quota, refused: bool, hold: float
) -> None:
    p = pacer(server)
    p.slow_down(BUCKET, quota, refused=refused)
    slot = p.take(BUCKET, rate=1000, within=hold - 0.01)
    assert not slot.taken
    assert slot.at - fake_time.now == pytest.approx(hold, abs=SLOT)


@pytest.mark.parametrize("remaining", [0, 1])
def test_a_quota_spent_within_the_last_second_of_its_window_is_left_to_the_pacing(
    server, remaining: int
) -> None:
    # Our own calls at Brevo's 10/s spend each second's window; its reset, in whole
    # seconds, cannot say whether it is a moment or a second away.
    p = pacer(server)
    p.slow_down(BUCKET, Quota(limit=10, remaining=remaining, reset_in=1.0), refused=False)
    assert p.take(BUCKET, rate=10, within=0.0).taken


def test_a_hold_moves_the_next_free_slot_past_the_ones_already_reserved(
    server, fake_time: FakeTime
) -> None:
    p = pacer(server)
    reserved = [p.take(BUCKET, rate=10, within=1.0) for _ in range(3)]
    p.slow_down(BUCKET, Quota(limit=100, remaining=0, reset_in=2.0), refused=False)
    after = p.take(BUCKET, rate=10, within=5.0)
    assert all(slot.taken for slot in reserved)
    assert after.at == pytest.approx(fake_time.now + 2.0, abs=SLOT)


@pytest.mark.parametrize(
    "quota", [Quota(limit=100, remaining=50, reset_in=2.0), Quota(None, remaining=5, reset_in=9)]
)
def test_a_quota_with_room_left_changes_nothing(server, quota: Quota) -> None:
    p = pacer(server)
    p.slow_down(BUCKET, quota, refused=False)
    assert p.take(BUCKET, rate=1000, within=0.0).taken


def test_a_reset_far_away_holds_the_account_no_longer_than_the_maximum(
    server, fake_time: FakeTime
) -> None:
    p = pacer(server, max_hold=1.5)
    p.slow_down(BUCKET, Quota(limit=36000, remaining=0, reset_in=3600.0), refused=False)
    assert p.take(BUCKET, rate=1000, within=60.0).at - fake_time.now == pytest.approx(1.5)


def test_rate_limits_are_read_by_connector_type_or_alias_and_unknown_names_refused() -> None:
    assert rate_limits(Settings(rate_limits={"brevo": 20, "Braze": 500}).rate_limits) == {
        "sendinblue": 20.0,
        "braze": 500.0,
    }
    with pytest.raises(InvalidSettings, match="'mailchimp', which is not a connector type"):
        rate_limits(Settings(rate_limits={"mailchimp": 5}).rate_limits)
    with pytest.raises(ValidationError, match="greater than 0"):
        Settings(rate_limits={"braze": 0})


def paced(server: fakeredis.FakeServer, max_sleep: float) -> PacedTransport:
    return PacedTransport(
        Transport(timeout=1.0),
        pacer(server),
        BUCKET,
        rate=10,  # a slot every (1 + MARGIN) / 10 s
        quota=lambda headers: None,
        max_sleep=max_sleep,
    )


REQUEST = HttpRequest("POST", "https://api.example/call", {})


def test_one_batch_sleeps_at_most_its_budget_in_all_then_defers_the_rest(
    server, mocked: responses.RequestsMock
) -> None:
    mocked.post(REQUEST.url, status=204)
    transport = paced(server, max_sleep=0.25)
    started = time.monotonic()
    for _ in range(3):  # the first slot is free, the next two cost 0.105 s each
        assert transport.send(REQUEST).status == 204
    with pytest.raises(Deferred) as deferred:
        transport.send(REQUEST)  # a third sleep would pass 0.25 s in all
    assert 0 < deferred.value.wait <= (1 + MARGIN) / 10
    assert len(mocked.calls) == 3
    assert 0.2 < time.monotonic() - started < 0.3
    assert transport.slept <= 0.25


def test_a_call_that_wakes_too_late_for_its_slot_leaves_it_and_goes_in_the_next(
    server, fake_time: FakeTime, mocked: responses.RequestsMock
) -> None:
    sent_at = []

    def answer(request: object) -> tuple[int, dict[str, str], str]:
        sent_at.append(fake_time.now)
        return 204, {}, ""

    mocked.add_callback(responses.POST, REQUEST.url, answer)
    transport = paced(server, max_sleep=1.0)
    fake_time.overshoots = [0.1]  # the sleep for the second call's slot
    transport.send(REQUEST)
    transport.send(REQUEST)
    # Sent 0.1 s after its slot, it could share a second with the ten calls after it: it
    # goes in the next free slot instead, the second after the first call's.
    assert sent_at[1] - sent_at[0] == pytest.approx(2 * (1 + MARGIN) / 10, abs=SLOT)


def test_only_a_refused_call_holds_the_account_until_a_reset_within_the_second(
    server, fake_time: FakeTime, mocked: responses.RequestsMock
) -> None:
    sent_at = []

    def answer(status: int) -> Callable[[object], tuple[int, dict[str, str], str]]:
        def reply(request: object) -> tuple[int, dict[str, str], str]:
            sent_at.append(fake_time.now)
            return status, {"remaining": "0", "reset": "1"}, ""

        return reply

    for status in (204, 429, 204):
        mocked.add_callback(responses.POST, REQUEST.url, answer(status))
    transport = PacedTransport(
        Transport(timeout=1.0),
        pacer(server),
        BUCKET,
        rate=10,
        quota=lambda headers: Quota(10, int(headers["remaining"]), float(headers["reset"])),
        max_sleep=5.0,
    )
    for _ in range(3):
        transport.send(REQUEST)
    assert sent_at[1] - sent_at[0] == pytest.approx((1 + MARGIN) / 10, abs=SLOT)
    assert sent_at[2] - sent_at[1] == pytest.approx(1.0, abs=SLOT)


def test_a_batch_starts_sleeping_only_for_a_slot_no_other_batch_waits_before(
    server, fake_time: FakeTime, mocked: responses.RequestsMock
) -> None:
    # Another batch of the account has reserved the next slots and sleeps for them: a new
    # batch defers at once rather than hold a second worker process asleep (lanes).
    mocked.post(REQUEST.url, status=204)
    other = pacer(server)
    for _ in range(3):
        assert other.take(BUCKET, 10, within=1.0).taken

    with pytest.raises(Deferred) as deferred:
        paced(server, max_sleep=1.0).send(REQUEST)
    assert deferred.value.wait == pytest.approx(3 * (1 + MARGIN) / 10, abs=SLOT)
    assert len(mocked.calls) == 0

    # Once its first call went out, a batch sleeps for its next slots within its budget,
    # whoever reserved the ones before.
    fake_time.now += 3 * (1 + MARGIN) / 10
    batch = paced(server, max_sleep=1.0)
    batch.send(REQUEST)
    assert other.take(BUCKET, 10, within=1.0).taken
    batch.send(REQUEST)
    assert len(mocked.calls) == 2 and batch.slept == pytest.approx(2 * (1 + MARGIN) / 10)
