"""The harness the task tests run on: the Celery tasks as a worker runs them, on a frozen
clock.

``task_always_eager`` ignores countdowns, so it cannot test the retry schedule. Instead each
message runs as a worker runs it: a ``celery.worker.request.Request`` executed through the
solo pool, so the tracer (not eager), ``autoretry_for``, ``ScheduledTask.retry``, the
``task_failure`` signal that dead-letters, and the worker's own ack/reject/failure handling
are all Celery's code. The broker is replaced by a recorder of what the tasks publish
(``ScheduledTask.apply_async``): a retry becomes a message with its args, kwargs (the carried
``attempts``), retries and countdown. ``Worker.drain`` moves the frozen clock (the
``clock`` of worker.queue's modules) to when each message is due and runs it.

Our data is in fakeredis, HTTP is mocked by ``responses``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import responses
from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import signals, states
from celery.concurrency.solo import TaskPool as SoloPool
from celery.contrib.testing.mocks import TaskMessage
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

import worker.connectors.braze
import worker.delivery.pacing
import worker.delivery.runtime
import worker.queue.patience
import worker.records.outbox
from worker.connectors.config import parse_config
from worker.delivery import runtime as runtime_module
from worker.delivery.runtime import Runtime
from worker.infra.settings import DEFAULT_RETRY_COUNTDOWNS, get_settings
from worker.queue import deadlettering, message, publishing, retrying, sweeps, tasks
from worker.queue.app import app
from worker.queue.tasks import ScheduledTask, deliver, route
from worker.records.deadletter import DeadLetter

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "events" / "event-created.json"
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


# The modules of worker.queue that read the clock.
CLOCKED = (deadlettering, message, publishing, retrying, sweeps, tasks)


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
        publishing.publish(task, list(args))

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
    monkeypatch.setattr(runtime_module, "_runtime", (os.getpid(), rt))
    for module in CLOCKED:
        monkeypatch.setattr(module, "clock", clock)
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
    seconds for it, on the clock of their waits (worker.queue.patience's sleep and monotonic,
    faked); the soft time limit comes after ``soft_limit`` seconds of waiting."""

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
    monkeypatch.setattr(worker.queue.patience, "sleep", outage.sleep)
    monkeypatch.setattr(worker.queue.patience, "monotonic", outage.monotonic)
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


def brevo_config(harness: Harness, batch_size: int | None = None) -> str:
    """Store a Brevo connector; ``batch_size`` (PREFSYNC_BREVO_BATCH_SIZE) 1 sends every
    contact in a call of its own, as a test of what happens between calls needs."""
    if batch_size is not None:
        assert "connectors" not in harness.rt.__dict__, "set before the runtime builds them"
        harness.rt.settings.brevo_batch_size = batch_size
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
