"""The Celery tasks as a worker runs them, on a frozen clock.

``task_always_eager`` ignores countdowns, so it cannot test the retry schedule. Instead each
message runs as a worker runs it: a ``celery.worker.request.Request`` executed through the
solo pool, so the tracer (not eager), ``autoretry_for``, ``ScheduledTask.retry``, the
``task_failure`` signal that dead-letters, and the worker's own ack/reject/failure handling
are all Celery's code. The broker is replaced by a recorder of what the tasks publish
(``ScheduledTask.apply_async``): a retry becomes a message with its args, kwargs (the carried
``attempts``), retries and countdown. ``Worker.drain`` moves the frozen clock
(``worker.queue.tasks.clock``) to when each message is due and runs it.

Our data is in fakeredis, HTTP is mocked by ``responses``.
"""

from __future__ import annotations

import copy
import json
import math
import re
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from pathlib import Path
from signal import SIGTERM, raise_signal
from signal import signal as set_signal_handler
from typing import Any

import fakeredis
import pytest
import redis
import responses
from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import signals, states
from celery.concurrency.solo import TaskPool as SoloPool
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import SoftTimeLimitExceeded, WorkerTerminate
from celery.worker.request import Request
from kombu.exceptions import EncodeError, OperationalError

import worker.connectors.braze
import worker.delivery.pacing
import worker.delivery.runtime
import worker.queue.tasks
import worker.records.outbox
from tests.unit.conftest import hold_elsewhere
from worker.connectors.base import Delivered
from worker.connectors.config import parse_config
from worker.core.errors import RetryableError
from worker.delivery.runtime import Runtime
from worker.infra.settings import DEFAULT_RETRY_COUNTDOWNS, Settings, get_settings
from worker.queue.app import app
from worker.queue.tasks import REDIS_PATIENCE, ScheduledTask, deliver, route
from worker.records.deadletter import DeadLetter

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "events" / "event-created.json"
TENANT = "acme"
USER = "jane.doe@example.com"
KEY = "braze-REST-KEY-0123456789abcdef"
BRAZE = "https://rest.fra-01.braze.eu"
TRACK = f"{BRAZE}/users/track"
BREVO = "https://api.brevo.com/v3"
BREVO_UPDATE = re.compile(re.escape(f"{BREVO}/contacts/") + r"[^/?]+\?identifierType=email_id")
START = 1_800_000_000.0  # the frozen clock's first reading (epoch seconds)
OFFSETS = list(accumulate(DEFAULT_RETRY_COUNTDOWNS))  # 10, 40, 100, 190, 300
JITTER = 0.1  # the default PREFSYNC_RETRY_JITTER
SUCCESS = {"message": "success", "attributes_processed": 1}
UNAVAILABLE = {"message": "Service Unavailable"}


# -- the harness ---------------------------------------------------------------------------


class Clock:
    """The one clock (worker.core.retries.clock), frozen; only tests move it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Message:
    """What a task published, as the broker would hold it."""

    task: str
    args: tuple
    kwargs: dict
    retries: int
    task_id: str
    countdown: float | None
    published_at: float

    @property
    def due(self) -> float:
        return self.published_at + (self.countdown or 0.0)


@dataclass
class Broker:
    """Stands in for Redis: records every publish instead of sending it."""

    clock: Clock
    published: list[Message] = field(default_factory=list)
    queue: list[Message] = field(default_factory=list)

    def publish(self, task: ScheduledTask, args: Any = None, kwargs: Any = None, **options: Any):
        message = Message(
            task=task.name,
            # Through JSON, as the real broker would carry it.
            args=tuple(json.loads(json.dumps(list(args or ())))),
            kwargs=json.loads(json.dumps(dict(kwargs or {}))),
            retries=int(options.get("retries") or 0),
            task_id=options.get("task_id") or str(uuid.uuid4()),
            countdown=options.get("countdown"),
            published_at=self.clock(),
        )
        self.published.append(message)
        self.queue.append(message)
        return types.SimpleNamespace(id=message.task_id)

    def retries(self) -> list[Message]:
        return [m for m in self.published if m.retries > 0]


@dataclass
class Run:
    message: Message
    started_at: float
    state: str  # the task signal that fired: SUCCESS, RETRY, FAILURE (or REJECTED: none)
    settled: str  # what the worker did with the message: "ack" or "reject"
    requeue: bool = False


class Worker:
    """Runs messages the way a worker does: a ``celery.worker.request.Request`` built from
    the message, executed through the solo pool. So the child side (tracer, autoretry,
    ``ScheduledTask.retry``, the ``task_failure`` signal) and the parent side
    (``Request.on_success``/``on_failure``: ack, reject, its own ``task_failure``) are both
    Celery's own code."""

    def __init__(self, clock: Clock, broker: Broker) -> None:
        self.clock = clock
        self.broker = broker
        self.runs: list[Run] = []
        self.pool = SoloPool()
        self.pool.start()

    def request(self, message: Message, settle: list[tuple[str, bool]]) -> Request:
        raw = TaskMessage(
            message.task,
            id=message.task_id,
            args=list(message.args),
            kwargs=copy.deepcopy(message.kwargs),
            retries=message.retries,
            root_id=message.task_id,
            timelimit=[None, None],
        )
        raw.delivery_info = {"exchange": "", "routing_key": "celery", "redelivered": False}
        raw.properties = {"priority": 0}
        return Request(
            raw,
            app=app,
            hostname="celery@test",
            connection_errors=(),
            on_ack=lambda *_, **__: settle.append(("ack", False)),
            on_reject=lambda _log, _errors, requeue: settle.append(("reject", requeue)),
        )

    def execute(self, message: Message) -> Run:
        fired: list[str] = []
        receivers = {
            states.SUCCESS: signals.task_success,
            states.RETRY: signals.task_retry,
            states.FAILURE: signals.task_failure,
        }

        def recorder(state: str) -> Callable[..., None]:
            def receiver(*_: Any, **__: Any) -> None:
                fired.append(state)

            return receiver

        handlers = {state: recorder(state) for state in receivers}
        for state, signal in receivers.items():
            signal.connect(handlers[state], weak=False)
        settle: list[tuple[str, bool]] = []
        started_at = self.clock()
        try:
            self.request(message, settle).execute_using_pool(self.pool)
        finally:
            for state, signal in receivers.items():
                signal.disconnect(handlers[state])
        assert len(settle) == 1, f"message settled {settle}"
        state = fired[0] if fired else states.REJECTED
        run = Run(message, started_at, state, settle[0][0], settle[0][1])
        self.runs.append(run)
        return run

    def send(self, task: ScheduledTask, *args: Any) -> None:
        """A producer's publish: the first attempt of a message, through the outbox."""
        worker.queue.tasks.publish(task, list(args))

    def drain(self, limit: int = 50) -> list[Run]:
        """Run every queued message, earliest due first, moving the clock to its due time."""
        for _ in range(limit):
            if not self.broker.queue:
                return self.runs
            message = min(self.broker.queue, key=lambda m: m.due)
            self.broker.queue.remove(message)
            if message.due > self.clock():
                self.clock.now = message.due
            self.execute(message)
        raise AssertionError(f"messages still queued after {limit} runs")


@dataclass
class Harness:
    rt: Runtime
    server: fakeredis.FakeServer  # our Redis data
    clock: Clock
    broker: Broker
    worker: Worker
    http_calls_at: list[float]

    def dead_letters(self) -> list[DeadLetter]:
        return self.rt.deadletters.list()

    def offsets(self) -> list[float]:
        """When each HTTP call was made, in seconds from the first one."""
        return [at - self.http_calls_at[0] for at in self.http_calls_at]


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("RETRY_COUNTDOWNS", "RETRY_JITTER", "RATE_LIMIT_MAX_WAIT", "VISIBILITY_TIMEOUT"):
        monkeypatch.delenv(f"PREFSYNC_{name}", raising=False)
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BREVO)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    rt = Runtime(get_settings())
    server = fakeredis.FakeServer()
    rt.__dict__["redis"] = fakeredis.FakeRedis(server=server)
    clock = Clock(START)
    broker = Broker(clock)
    monkeypatch.setattr(worker.queue.tasks, "runtime", lambda: rt)
    monkeypatch.setattr(worker.queue.tasks, "clock", clock)
    # Braze's X-RateLimit-Reset is an epoch time, read against the clock the runtime gives
    # the connectors.
    monkeypatch.setattr(worker.delivery.runtime, "clock", clock)
    monkeypatch.setattr(worker.delivery.pacing, "clock", clock)  # rate-limit slots

    def apply_async(task: ScheduledTask, args: Any = None, kwargs: Any = None, **options: Any):
        return broker.publish(task, args, kwargs, **options)

    for task in (deliver, route):
        # The tracer is built once per task and cached on it: build ours, then put back.
        monkeypatch.setattr(app.tasks[task.name], "__trace__", None)
    # Every publish of route/deliver (a retry, route's fan-out) goes to the recorder.
    monkeypatch.setattr(ScheduledTask, "apply_async", apply_async)
    return Harness(rt, server, clock, broker, Worker(clock, broker), [])


@dataclass
class Outage:
    """Our Redis (fakeredis) down from ``begin()`` until the tasks have waited ``lasts``
    seconds for it, on the clock of their waits (worker.queue.tasks' sleep and monotonic, faked);
    the soft time limit comes after ``soft_limit`` seconds of waiting."""

    server: fakeredis.FakeServer
    lasts: float = 3.0
    soft_limit: float = math.inf
    waits: list[float] = field(default_factory=list)

    def begin(self) -> None:
        self.server.connected = False

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.monotonic() >= self.soft_limit:
            raise SoftTimeLimitExceeded()
        if self.monotonic() >= self.lasts:
            self.server.connected = True

    def monotonic(self) -> float:
        return sum(self.waits)


@pytest.fixture
def outage(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Outage:
    outage = Outage(harness.server)
    monkeypatch.setattr(worker.queue.tasks, "sleep", outage.sleep)
    monkeypatch.setattr(worker.queue.tasks, "monotonic", outage.monotonic)
    return outage


def event() -> dict[str, Any]:
    return json.loads(EXAMPLE.read_text())


def braze_config(harness: Harness) -> str:
    config = parse_config(
        {
            "id": "braze-eu",
            "type_id": "braze",
            "authentication": {"api_key": KEY, "server": BRAZE},
            "mappings": [
                {"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"},
                {
                    "id": "newsletter_frequency",
                    "value": "consents_purposes_newsletter_values_frequency_value",
                },
            ],
        }
    )
    harness.rt.configs.put(TENANT, config)
    return config.id


def brevo_config(harness: Harness) -> str:
    config = parse_config(
        {
            "id": "brevo",
            "type_id": "brevo",
            "authentication": {"private_api_key": "xkeysib-TESTKEY-0123456789abcdef"},
            "mappings": [
                {
                    "id": "EMAIL_CAMPAIGNS_SUBSCRIBED",
                    "value": "consents_purposes_newsletter_enabled",
                }
            ],
        }
    )
    harness.rt.configs.put(TENANT, config)
    return config.id


def answers(
    harness: Harness,
    mocked: responses.RequestsMock,
    replies: list[tuple[int, dict[str, Any] | None, dict[str, Any]]],
    *,
    method: str = "POST",
    url: Any = TRACK,
    takes: float = 0.0,
) -> None:
    """Answer successive calls with ``replies`` (status, body, headers); the last repeats.
    Each call is logged at the frozen clock's time and then takes ``takes`` seconds."""

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        harness.http_calls_at.append(harness.clock())
        status, body, headers = replies[min(len(harness.http_calls_at), len(replies)) - 1]
        harness.clock.advance(takes)
        text = "" if body is None else json.dumps(body)
        return status, {"Content-Type": "application/json", **headers}, text

    mocked.add_callback(method, url, callback=reply)


def sent_body(mocked: responses.RequestsMock, index: int = 0) -> dict[str, Any]:
    return json.loads(mocked.calls[index].request.body)


# -- the retry schedule ----------------------------------------------------------------------


def test_a_failing_destination_gets_six_attempts_inside_five_minutes_then_one_dead_letter(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])

    harness.worker.send(deliver, [event()], connector_id)
    runs = harness.worker.drain()

    assert len(mocked.calls) == 6
    offsets = harness.offsets()
    assert offsets[0] == 0
    for offset, target, step in zip(offsets[1:], OFFSETS, DEFAULT_RETRY_COUNTDOWNS, strict=True):
        assert target - JITTER * step <= offset <= target
    assert offsets[-1] <= 300
    # Five retries were published, each one retry further, with the same task id.
    retries = harness.broker.retries()
    assert [m.retries for m in retries] == [1, 2, 3, 4, 5]
    assert {m.task_id for m in harness.broker.published} == {runs[0].message.task_id}
    assert [len(m.kwargs["attempts"]) for m in retries] == [1, 2, 3, 4, 5]
    assert [r.state for r in runs] == [states.RETRY] * 5 + [states.SUCCESS]
    assert [r.settled for r in runs] == ["ack"] * 6  # each retry replaces its message

    [entry] = harness.dead_letters()
    assert entry.connector_id == connector_id
    assert (entry.tenant, entry.user) == (TENANT, USER)
    assert entry.payload == event()
    assert len(entry.attempts) == 6
    assert [a.at - START for a in entry.attempts] == pytest.approx(offsets)
    assert [a.status for a in entry.attempts] == [503] * 6
    assert all("HTTP 503" in a.error for a in entry.attempts)
    assert entry.reason.startswith("gave up after 6 attempts")
    assert "Braze is unavailable (HTTP 503)" in entry.reason
    assert entry.dead_lettered_at == harness.clock()
    counts = harness.rt.recorder.counts(TENANT, connector_id)
    assert counts == {"dead_lettered": 1}
    assert harness.rt.outbox.pending() == 0  # ended: nothing for the sweep to publish again


def test_slow_attempts_do_not_push_the_last_attempt_past_five_minutes(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    # Every attempt spends 20 s (a slow destination) before it fails.
    answers(harness, mocked, [(503, UNAVAILABLE, {})], takes=20.0)

    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.drain()

    assert len(mocked.calls) == 6
    offsets = harness.offsets()
    # An attempt never starts before the previous one ended, nor before its offset less
    # its jitter; once the schedule has room again it is back on its offsets.
    for previous, offset, target, step in zip(
        offsets[:-1], offsets[1:], OFFSETS, DEFAULT_RETRY_COUNTDOWNS, strict=True
    ):
        assert offset >= previous + 20
        assert offset >= target - JITTER * step
        assert offset <= max(target, previous + 20)
    # 20, 40 (late: the previous attempt was still running), then ~100, ~190, ~300.
    assert offsets[1:3] == pytest.approx([20, 40])
    assert offsets[-1] <= 300
    [entry] = harness.dead_letters()
    assert len(entry.attempts) == 6


def test_a_destination_that_recovers_after_four_failures_is_delivered(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})] * 4 + [(201, SUCCESS, {})])

    harness.worker.send(deliver, [event()], connector_id)
    runs = harness.worker.drain()

    assert len(mocked.calls) == 5
    assert [r.state for r in runs] == [states.RETRY] * 4 + [states.SUCCESS]
    assert harness.dead_letters() == []
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert sent_body(mocked, 4) == {
        "attributes": [
            {
                "external_id": USER,
                "_update_existing_only": True,
                "email_subscribe": "opted_in",
                "newsletter_frequency": "weekly",
            }
        ]
    }


# -- answers that must not be retried ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, {"message": "Invalid 'external_id'"}, "Invalid 'external_id'"),
        (401, {"message": "Invalid API key"}, "refused the credentials (HTTP 401)"),
        (403, {"message": "Access Denied"}, "refused the credentials (HTTP 403)"),
        (
            201,
            {
                "message": "success",
                "errors": [{"type": "'email' is not a valid email", "index": 0}],
            },
            "'email' is not a valid email",
        ),
    ],
    ids=["400", "401", "403", "201-with-errors"],
)
def test_braze_permanent_errors_are_dead_lettered_at_once(
    harness: Harness,
    mocked: responses.RequestsMock,
    status: int,
    body: dict[str, Any],
    message: str,
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(status, body, {})])

    harness.worker.send(deliver, [event()], connector_id)
    runs = harness.worker.drain()

    assert len(mocked.calls) == 1
    assert harness.broker.retries() == []
    assert [(r.state, r.settled) for r in runs] == [(states.SUCCESS, "ack")]
    [entry] = harness.dead_letters()
    assert entry.reason.startswith("refused by the destination")
    assert message in entry.reason
    assert body["message"] in entry.reason
    assert [(a.status, a.at) for a in entry.attempts] == [(status, START)]
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"dead_lettered": 1}


def test_brevo_400_is_dead_lettered_at_once_with_brevos_code_and_message(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = brevo_config(harness)
    refusal = {"code": "invalid_parameter", "message": "attributes should be an object"}
    answers(harness, mocked, [(400, refusal, {})], method="PUT", url=BREVO_UPDATE)

    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.drain()

    assert len(mocked.calls) == 1
    assert harness.broker.retries() == []
    [entry] = harness.dead_letters()
    assert entry.connector_id == connector_id
    assert "invalid_parameter: attributes should be an object" in entry.reason
    assert entry.reason.startswith("refused by the destination")
    assert [a.status for a in entry.attempts] == [400]


# -- rate limits -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset_in", "max_wait", "expected_wait"),
    [
        (45.0, 60.0, 45.0),  # past the 10 s offset: wait for the reset
        (500.0, 60.0, 60.0),  # further than allowed: wait the longest allowed
        (500.0, 25.0, 25.0),
    ],
)
def test_a_rate_limited_retry_waits_for_the_reset_up_to_the_configured_maximum(
    harness: Harness,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    reset_in: float,
    max_wait: float,
    expected_wait: float,
) -> None:
    monkeypatch.setenv("PREFSYNC_RATE_LIMIT_MAX_WAIT", str(max_wait))
    get_settings.cache_clear()
    harness.rt.settings = get_settings()  # the pacer's longest hold is this maximum too
    harness.rt.__dict__.pop("deliverer", None)
    connector_id = braze_config(harness)
    limited = {"X-RateLimit-Reset": str(int(START + reset_in)), "X-RateLimit-Remaining": "0"}
    answers(harness, mocked, [(429, {"message": "rate limited"}, limited), (201, SUCCESS, {})])

    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.drain()

    [retry] = harness.broker.retries()
    assert retry.countdown == pytest.approx(expected_wait)
    assert expected_wait > OFFSETS[0]  # later than the schedule alone would have retried
    assert harness.offsets() == pytest.approx([0.0, expected_wait])
    assert retry.kwargs["attempts"][0]["status"] == 429
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.dead_letters() == []


# -- invalid events ----------------------------------------------------------------------------


def test_an_invalid_payload_given_to_route_is_dead_lettered_not_retried(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    braze_config(harness)
    payload = event()
    del payload["parameters"]["entity"]["organization_id"]

    harness.worker.send(route, [payload])
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.SUCCESS]
    assert harness.broker.published == [runs[0].message]  # no retry, no delivery
    assert len(mocked.calls) == 0
    [entry] = harness.dead_letters()
    assert entry.reason.startswith("invalid event")
    assert "parameters.entity.organization_id: field required" in entry.reason
    assert entry.connector_id == ""
    assert entry.payload == payload
    assert len(entry.attempts) == 1


def test_route_fans_a_valid_event_out_to_a_delivery_per_connector(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(201, SUCCESS, {})])

    harness.worker.send(route, [event()])
    runs = harness.worker.drain()

    assert [(r.message.task, r.state) for r in runs] == [
        ("prefsync.route", states.SUCCESS),
        ("prefsync.deliver", states.SUCCESS),
    ]
    assert runs[1].message.args == ([event()], connector_id)
    assert len(mocked.calls) == 1
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.rt.outbox.pending() == 0


def test_a_task_waiting_for_its_retry_stays_in_the_outbox_until_it_is_due(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])
    harness.worker.send(deliver, [event()], connector_id)
    first = harness.worker.execute(harness.broker.queue.pop())  # fails; its retry is queued
    published = []

    def record(task_id: str, *_: Any) -> None:
        published.append(task_id)

    # The retry waits 10 s: until then plus the grace (the visibility timeout), it is not lost.
    grace = harness.rt.settings.visibility_timeout
    assert harness.rt.outbox.sweep(harness.clock() + 9 + grace, record) == 0
    assert harness.rt.outbox.sweep(harness.clock() + 10 + grace, record) == 1
    assert published == [first.message.task_id]


# -- settings ----------------------------------------------------------------------------------


def test_retry_countdowns_longer_than_the_visibility_timeout_allows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"visibility_timeout \(100s\) must exceed"):
        Settings(retry_countdowns=(10.0, 30.0, 90.0), visibility_timeout=100)
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(retry_countdowns=(1.0, 2.0), rate_limit_max_wait=30.0, visibility_timeout=60)
    # With room for the longest wait plus the time limit, it starts.
    Settings(retry_countdowns=(10.0, 30.0, 90.0), task_time_limit=60, visibility_timeout=200)


# -- failures the worker's parent process reports ----------------------------------------------


def second_attempt_whose_retry_cannot_be_published(
    harness: Harness,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> Run:
    """Run the second attempt of a failing delivery, whose retry Celery cannot publish
    (``error``): it rejects the message, which it would otherwise lose."""
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])
    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.execute(harness.broker.queue.pop())
    [first_retry] = harness.broker.queue
    harness.broker.queue.clear()

    def cannot_publish(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(ScheduledTask, "apply_async", cannot_publish)
    harness.clock.now = first_retry.due
    return harness.worker.execute(first_retry)


def test_a_retry_celery_cannot_publish_is_dead_lettered_once_with_every_attempt(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # For a reason of its own, not Redis: the worker's parent reports the rejection as a
    # failure too, and it stays one dead letter.
    error = EncodeError("cannot serialize the retry")
    run = second_attempt_whose_retry_cannot_be_published(harness, mocked, monkeypatch, error)

    assert len(mocked.calls) == 2
    assert (run.settled, run.requeue) == ("reject", False)
    [entry] = harness.dead_letters()
    assert [a.status for a in entry.attempts] == [503, 503]
    assert "EncodeError" in entry.reason
    assert harness.rt.recorder.counts(TENANT, "braze-eu") == {"dead_lettered": 1}
    assert harness.rt.outbox.pending() == 0


@pytest.mark.parametrize(
    "error",
    [
        # What kombu raises once its publish retry policy gave up.
        OperationalError("Error 111 connecting to redis:6379. Connection refused."),
        redis.exceptions.ConnectionError("Error 111 connecting to redis:6379"),
    ],
    ids=["kombu", "redis"],
)
def test_a_retry_that_cannot_be_published_while_redis_is_down_puts_the_message_back(
    harness: Harness,
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
) -> None:
    run = second_attempt_whose_retry_cannot_be_published(harness, mocked, monkeypatch, error)

    # Unacknowledged, to run again with the attempts it carries: Redis is to blame.
    assert (run.state, run.settled, run.requeue) == (states.REJECTED, "reject", True)
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 1


@pytest.mark.parametrize("redis_restarts", [False, True], ids=["", "while-redis-restarts"])
def test_a_hard_time_limit_is_dead_lettered_with_the_attempts_the_message_carried(
    harness: Harness, outage: Outage, redis_restarts: bool
) -> None:
    connector_id = braze_config(harness)
    carried = [
        {"at": START, "status": 503, "error": "Braze is unavailable (HTTP 503)"},
        {"at": START + 10, "status": None, "error": "timed out after 10.0s"},
    ]
    settle = cut_off_by_the_hard_limit(
        harness, ([event()], connector_id), carried, outage if redis_restarts else None
    )

    assert bool(outage.waits) == redis_restarts  # it waited for Redis to write the entry
    [entry] = harness.dead_letters()
    assert entry.connector_id == connector_id
    assert [(a.at, a.status) for a in entry.attempts[:2]] == [(START, 503), (START + 10, None)]
    assert len(entry.attempts) == 3
    assert "TimeLimitExceeded" in entry.reason
    assert settle == [("ack", False)]  # not requeued: a message that hangs does not loop
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"dead_lettered": 1}
    assert harness.rt.outbox.pending() == 0


def cut_off_by_the_hard_limit(
    harness: Harness, args: tuple, carried: list[dict[str, Any]], outage: Outage | None = None
) -> list[tuple[str, bool]]:
    """Run a deliver message (with ``carried`` attempts) that the hard time limit kills,
    reported while Redis restarts if there is an ``outage``; returns how the worker settled
    it."""
    message = Message(
        task=deliver.name,
        args=args,
        kwargs={"attempts": carried},
        retries=len(carried),
        task_id=str(uuid.uuid4()),
        countdown=None,
        published_at=START + 20,
    )
    harness.rt.outbox.add(message.task_id, message.task, list(message.args), message.kwargs, START)
    harness.clock.now = START + 100
    if outage is not None:
        outage.begin()
    return report_hard_limit(harness, message)


def report_hard_limit(harness: Harness, message: Message) -> list[tuple[str, bool]]:
    """The worker's parent reports a hard time limit for a run of ``message``; returns how
    it settled the message."""
    settle: list[tuple[str, bool]] = []
    request = harness.worker.request(message, settle)
    # The pool child is killed at the hard limit and the worker's parent reports it twice,
    # as billiard's on_hard_timeout does: the job's TimeLimitExceeded result (on_failure),
    # then the timeout callback.
    try:
        raise TimeLimitExceeded(60)
    except TimeLimitExceeded:
        request.on_failure(ExceptionInfo())
    request.on_timeout(soft=False, timeout=60)
    return settle


def test_attempts_lost_with_their_pool_child_are_counted_in_the_dead_letter(
    harness: Harness,
) -> None:
    connector_id = braze_config(harness)
    # Celery republished this message twice after a lost pool child (retries 1 and 2),
    # which cannot add to the carried attempts: only the first attempt is on record.
    message = Message(
        task=deliver.name,
        args=([event()], "no-such-connector"),
        kwargs={"attempts": [{"at": START, "status": 503, "error": "HTTP 503"}]},
        retries=3,
        task_id=str(uuid.uuid4()),
        countdown=None,
        published_at=START + 50,
    )
    harness.clock.now = START + 50
    harness.worker.execute(message)

    [entry] = harness.dead_letters()
    assert [a.error for a in entry.attempts[1:3]] == [
        "worker lost during this attempt (no record)"
    ] * 2
    assert len(entry.attempts) == 4
    assert "not configured" in entry.reason
    assert connector_id != entry.connector_id


# -- Redis down while an attempt is settled ----------------------------------------------------


def braze_takes_the_call_as_redis_dies(
    harness: Harness, mocked: responses.RequestsMock, outage: Outage
) -> str:
    """A Braze connector whose call Braze takes while Redis dies: nothing after the call can
    be recorded. Returns the connector id."""

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        outage.begin()
        return 201, {"Content-Type": "application/json"}, json.dumps(SUCCESS)

    mocked.add_callback("POST", TRACK, callback=reply)
    return braze_config(harness)


def test_a_retry_written_while_redis_restarts_waits_for_redis_and_nothing_is_dead_lettered(
    harness: Harness, mocked: responses.RequestsMock, outage: Outage
) -> None:
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)

    run = harness.worker.execute(harness.broker.queue.pop())

    # The attempt failed on Redis; its retry waited for Redis and was written, outbox first.
    assert (run.state, run.settled) == (states.RETRY, "ack")  # replaced by its retry
    assert outage.lasts <= sum(outage.waits) <= REDIS_PATIENCE
    [retry] = harness.broker.retries()
    [attempt] = retry.kwargs["attempts"]
    assert "connection error" in attempt["error"].lower()
    entry = harness.rt.outbox.entry(retry.task_id)
    assert entry["kwargs"] == retry.kwargs
    assert harness.dead_letters() == []


@pytest.mark.parametrize(
    ("lasts", "soft_limit"),
    [(math.inf, math.inf), (math.inf, 1.0)],
    ids=["redis-stays-down", "soft-time-limit-first"],
)
def test_a_retry_that_cannot_be_written_puts_the_message_back_unacknowledged(
    harness: Harness,
    mocked: responses.RequestsMock,
    outage: Outage,
    lasts: float,
    soft_limit: float,
) -> None:
    outage.lasts, outage.soft_limit = lasts, soft_limit
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)

    run = harness.worker.execute(harness.broker.queue.pop())

    # Neither acknowledged nor a failure: the message runs again with what it carries.
    assert (run.state, run.settled, run.requeue) == (states.REJECTED, "reject", True)
    assert sum(outage.waits) <= REDIS_PATIENCE
    assert harness.broker.retries() == []
    harness.server.connected = True
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 1


def test_a_sigterm_while_the_retry_waits_for_redis_is_let_through_once_it_is_written(
    harness: Harness,
    mocked: responses.RequestsMock,
    outage: Outage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The worker terminates the tasks still running when its broker connection drops; in a
    # pool process, billiard's SIGTERM handler exits. Here it notes the retries published,
    # and exits with what the solo pool lets through.
    published_at_exit: list[int] = []

    def exit_pool_process(signum: int, _: Any) -> None:
        published_at_exit.append(len(harness.broker.retries()))
        raise WorkerTerminate(signum)

    def sleep(seconds: float) -> None:
        if not outage.waits:
            raise_signal(SIGTERM)
        outage.sleep(seconds)

    monkeypatch.setattr(worker.queue.tasks, "sleep", sleep)
    connector_id = braze_takes_the_call_as_redis_dies(harness, mocked, outage)
    harness.worker.send(deliver, [event()], connector_id)
    previous = set_signal_handler(SIGTERM, exit_pool_process)
    try:
        with pytest.raises(WorkerTerminate):
            harness.worker.execute(harness.broker.queue.pop())
    finally:
        set_signal_handler(SIGTERM, previous)

    assert published_at_exit == [1]
    assert harness.broker.retries()[0].kwargs["attempts"]  # ours, with the attempt


def test_a_hard_time_limit_reported_after_the_run_wrote_its_retry_is_not_dead_lettered(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {}), (201, SUCCESS, {})])
    harness.worker.send(deliver, [event()], connector_id)
    first = harness.broker.queue[0]
    harness.worker.execute(first)  # 503: its retry is written and published

    # The worker's parent had not read that result when its timer of the hard limit fired
    # (it was reconnecting to Redis): it reports the run as cut off.
    report_hard_limit(harness, first)
    assert harness.dead_letters() == []

    harness.broker.queue.remove(first)
    harness.worker.drain()
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.dead_letters() == []
    assert harness.rt.outbox.pending() == 0


# -- pacing: rate limits and busy users defer, they use no retry ----------------------------------


def event_of(user: str) -> dict[str, Any]:
    payload = event()
    entity = payload["parameters"]["entity"]
    entity["id"] = f"e-{user}"
    entity["user"]["organization_user_id"] = user
    return payload


@pytest.fixture
def no_sleep(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    # The clock is frozen, so a sleeping worker would wait for nothing: defer at once.
    monkeypatch.setattr(harness.rt.settings, "pacing_max_sleep", 0.0)
    harness.rt.__dict__.pop("deliverer", None)


def test_calls_to_one_brevo_account_are_spaced_by_its_rate_without_using_retries(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness)
    answers(harness, mocked, [(204, None, {})], method="PUT", url=BREVO_UPDATE)
    for n in range(4):
        harness.worker.send(deliver, [event_of(f"user{n}@example.com")], connector_id)

    harness.worker.drain()

    offsets = harness.offsets()
    assert len(offsets) == 4
    gaps = [b - a for a, b in pairwise(offsets)]
    assert all(gap >= 0.1 for gap in gaps), gaps  # Brevo's default: 10 calls per second
    assert harness.broker.retries() == []
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 4}
    assert harness.rt.outbox.pending() == 0


def test_a_spent_quota_in_the_answer_holds_the_next_call_until_the_window_resets(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness)
    spent = {"x-sib-ratelimit-limit": "10", "x-sib-ratelimit-remaining": "0"}
    answers(
        harness,
        mocked,
        [(204, None, {**spent, "x-sib-ratelimit-reset": "5"}), (204, None, {})],
        method="PUT",
        url=BREVO_UPDATE,
    )
    harness.worker.send(deliver, [event_of("a@example.com")], connector_id)
    harness.worker.send(deliver, [event_of("b@example.com")], connector_id)

    harness.worker.drain()

    assert harness.offsets()[1] >= 5.0
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 2}


def test_a_user_another_delivery_holds_is_deferred_with_its_attempts_not_retried(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {}), (201, SUCCESS, {})])
    harness.worker.send(deliver, [event()], connector_id)
    harness.worker.execute(harness.broker.queue.pop())  # 503: a retry is scheduled
    release = hold_elsewhere(harness.rt.state, TENANT, connector_id, USER)

    [retry] = harness.broker.queue
    harness.clock.now = retry.due
    harness.worker.execute(harness.broker.queue.pop())
    [deferred] = harness.broker.queue
    assert (deferred.retries, deferred.kwargs) == (retry.retries, retry.kwargs)
    assert len(mocked.calls) == 1

    release()
    harness.worker.drain()
    assert len(mocked.calls) == 2
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 1}
    assert harness.rt.outbox.pending() == 0


# -- batches: what one event of a batch does to the others ------------------------------------


def test_a_route_batch_dead_letters_its_invalid_event_and_routes_the_others(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    invalid = event_of("b@example.com")
    del invalid["parameters"]["entity"]["organization_id"]
    valid = [event_of("a@example.com"), event_of("c@example.com")]
    answers(harness, mocked, [(201, SUCCESS, {})])

    harness.worker.send(route, [valid[0], invalid, valid[1]])
    runs = harness.worker.drain()

    assert [(r.message.task, r.state) for r in runs] == [
        ("prefsync.route", states.SUCCESS),
        ("prefsync.deliver", states.SUCCESS),
    ]
    assert runs[1].message.args == (valid, connector_id)
    [entry] = harness.dead_letters()
    assert entry.payload == invalid and entry.reason.startswith("invalid event")
    assert [o["external_id"] for o in sent_body(mocked)["attributes"]] == [
        "a@example.com",
        "c@example.com",
    ]
    assert harness.rt.outbox.pending() == 0


def test_a_transient_failure_retries_only_the_events_left_and_a_refusal_only_its_own(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness)
    harness.rt.settings.rate_limits["sendinblue"] = 1e6  # no pacing in the way here
    users = ["a@example.com", "b@example.com", "c@example.com", "d@example.com"]
    # a: 204, b: 400 (refused), c: 503 (down): c and d are left for the retry.
    refused = {"code": "invalid_parameter", "message": "bad attribute"}
    answers(
        harness,
        mocked,
        [(204, None, {}), (400, refused, {}), (503, None, {}), (204, None, {})],
        method="PUT",
        url=BREVO_UPDATE,
        takes=0.01,  # the clock moves on, so the next pacing slot is free
    )

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.RETRY, states.SUCCESS]
    retry = runs[1].message
    assert retry.args == ([event_of("c@example.com"), event_of("d@example.com")], connector_id)
    assert retry.retries == 1 and len(retry.kwargs["attempts"]) == 1
    called = [call.request.url.split("/contacts/")[1].split("?")[0] for call in mocked.calls]
    first_run, retry_run = ["a", "b", "c"], ["c", "d"]
    assert called == [f"{u}%40example.com" for u in [*first_run, *retry_run]]
    [entry] = harness.dead_letters()
    assert entry.user == "b@example.com" and "bad attribute" in entry.reason
    assert harness.rt.recorder.counts(TENANT, connector_id) == {
        "dead_lettered": 1,
        "delivered": 3,
    }
    assert harness.rt.outbox.pending() == 0
    # Should Celery report that first run as failed too (a hard time limit after the
    # answers came), b keeps its one entry: one per event and run, whichever path.
    first = runs[0].message
    worker.queue.tasks._dead_letter_failures(
        sender=deliver,
        task_id=first.task_id,
        exception=RetryableError("reported late"),
        args=first.args,
        kwargs=first.kwargs,
    )
    assert [e.id for e in harness.dead_letters()] == [entry.id]


def test_a_bug_in_a_batch_splits_it_and_dead_letters_only_the_event_that_causes_it(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    real = worker.connectors.braze.BrazeConnector.deliver_many

    def poisoned(self: Any, transport: Any, config: Any, changes: Any) -> Any:
        if any(change.user == "poison" for change in changes):
            raise ZeroDivisionError("poisoned")
        return real(self, transport, config, changes)

    monkeypatch.setattr(worker.connectors.braze.BrazeConnector, "deliver_many", poisoned)
    answers(harness, mocked, [(201, SUCCESS, {})], takes=0.01)  # a free pacing slot each
    users = ["a@example.com", "poison", "c@example.com"]

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    # The batch fails; of its three events, run alone, only the poison one fails again.
    assert [r.state for r in runs] == [
        states.FAILURE,
        states.SUCCESS,
        states.FAILURE,
        states.SUCCESS,
    ]
    assert [r.message.args[0] for r in runs[1:]] == [[event_of(u)] for u in users]
    assert all(r.message.retries == 0 for r in runs[1:])
    [entry] = harness.dead_letters()
    assert entry.user == "poison" and len(entry.attempts) == 1
    assert entry.reason.startswith("unexpected error: ZeroDivisionError: poisoned")
    delivered = [
        o["external_id"]
        for call in mocked.calls
        for o in json.loads(call.request.body)["attributes"]
    ]
    assert delivered == ["a@example.com", "c@example.com"]
    assert harness.rt.outbox.pending() == 0


def test_a_batch_cut_off_by_the_hard_time_limit_is_split_not_dead_lettered(
    harness: Harness,
) -> None:
    connector_id = braze_config(harness)
    carried = [{"at": START, "status": 503, "error": "Braze is unavailable (HTTP 503)"}]
    batch = [event_of("a@example.com"), event_of("b@example.com")]

    settle = cut_off_by_the_hard_limit(harness, (batch, connector_id), carried)

    assert settle == [("ack", False)]
    assert harness.dead_letters() == []
    split = harness.broker.published
    assert [m.args for m in split] == [([p], connector_id) for p in batch]
    assert all(m.kwargs == {"attempts": carried} and m.retries == 1 for m in split)
    # The batch ended; each of its events is in the outbox on its own.
    assert harness.rt.outbox.pending() == 2


def test_a_batch_that_overruns_the_soft_time_limit_is_split(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    calls = []

    def slow_once(self: Any, transport: Any, config: Any, changes: Any) -> Any:
        calls.append([change.user for change in changes])
        if len(calls) == 1:
            raise SoftTimeLimitExceeded()
        return [Delivered(201, {})] * len(changes)

    monkeypatch.setattr(worker.connectors.braze.BrazeConnector, "deliver_many", slow_once)
    users = ["a@example.com", "b@example.com"]

    harness.worker.send(deliver, [event_of(u) for u in users], connector_id)
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.SUCCESS] * 3
    assert calls == [users, ["a@example.com"], ["b@example.com"]]
    assert harness.dead_letters() == []
    assert harness.rt.recorder.counts(TENANT, connector_id) == {"delivered": 2}
    assert harness.rt.outbox.pending() == 0
