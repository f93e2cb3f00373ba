"""The producer: events published in order, MAX_BATCH a message, and nothing of a batch
with an invalid event; when Redis cannot take a message, one clear error naming the broker
without its password and saying how much went before, and `prefsync enqueue` saying where
it stopped, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from worker import producer
from worker.cli import main
from worker.core.errors import InvalidEvent, PrefsyncError
from worker.delivery.runtime import Runtime
from worker.infra.redis_client import redacted_url
from worker.infra.settings import Settings
from worker.producer import BrokerUnavailable
from worker.queue import tasks
from worker.records import outbox

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PASSWORD = "hunter2-redis-pass"
URL = f"redis://:{PASSWORD}@127.0.0.1:6390/0"


def event(user: str = "jane.doe@example.com") -> dict[str, Any]:
    payload = json.loads((EXAMPLES / "events" / "event-created.json").read_text())
    payload["parameters"]["entity"]["user"]["organization_user_id"] = user
    return payload


def invalid_event() -> dict[str, Any]:
    payload = event()
    del payload["parameters"]["entity"]["organization_id"]
    return payload


@pytest.fixture
def password_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "get_settings", lambda: Settings(redis_url=URL))


def broker(
    monkeypatch: pytest.MonkeyPatch, refuse_from: int | None = None
) -> list[tuple[str, list[Any]]]:
    """Messages published as (task name, args) instead of to Redis; the message numbered
    ``refuse_from`` (0-based) and every one after it are refused as Redis down would be."""
    sent: list[tuple[str, list[Any]]] = []

    def capture(task: Any) -> Any:
        def apply_async(args: list[Any], **_: Any) -> Any:
            if refuse_from is not None and len(sent) >= refuse_from:
                raise OperationalError("Error 111 connecting. Connection refused.")
            sent.append((task.name, args))
            return type("AsyncResult", (), {"id": f"task-{len(sent)}"})()

        return apply_async

    for task in (tasks.route, tasks.deliver):
        monkeypatch.setattr(task, "apply_async", capture(task))
    return sent


def outbox_args(rt: Runtime, task_id: str) -> list[Any]:
    return json.loads(rt.redis.hget(outbox.ENTRIES, task_id))["args"]


# -- what is published -------------------------------------------------------------------


def test_enqueue_many_publishes_messages_of_max_batch_events_in_order(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = broker(monkeypatch)
    payloads = [event(f"u-{n}") for n in range(250)]

    task_ids = producer.enqueue_many(iter(payloads))

    assert producer.MAX_BATCH == 100
    assert sent == [
        ("prefsync.route", [payloads[:100]]),
        ("prefsync.route", [payloads[100:200]]),
        ("prefsync.route", [payloads[200:]]),
    ]
    # One task id a message, in order, each written to the outbox before it was published.
    assert [outbox_args(rt, task_id) for task_id in task_ids] == [args for _, args in sent]


def test_enqueue_many_with_an_invalid_event_names_its_position_and_enqueues_nothing(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = broker(monkeypatch)
    payloads = [event(), event(), invalid_event(), event(), invalid_event()]

    with pytest.raises(InvalidEvent) as raised:
        producer.enqueue_many(payloads)

    assert str(raised.value).startswith("event 3: ")
    assert "organization_id" in str(raised.value)
    assert sent == []


def test_enqueue_many_of_nothing_publishes_nothing(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = broker(monkeypatch)
    assert producer.enqueue_many([]) == []
    assert sent == []


def test_enqueue_publishes_one_message_of_one_event_and_refuses_as_validate_does(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = broker(monkeypatch)
    payload = event()

    task_id = producer.enqueue(payload)

    assert sent == [("prefsync.route", [[payload]])]
    assert outbox_args(rt, task_id) == [[payload]]
    with pytest.raises(InvalidEvent) as refused:
        producer.enqueue(invalid_event())
    with pytest.raises(InvalidEvent) as validated:
        producer.validate(invalid_event())
    assert str(refused.value) == str(validated.value)  # no "event 1:" for a single event
    assert len(sent) == 1


def test_redeliver_publishes_the_event_to_one_connector(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent = broker(monkeypatch)
    payload = event()

    producer.redeliver(payload, "braze")

    assert sent == [("prefsync.deliver", [[payload], "braze"])]


# -- Redis unavailable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("rediss://user:pw@h/0", "rediss://user:***@h/0"),
        ("redis://secret@h/0", "redis://***@h/0"),  # a lone user info may be the password
        ("redis://:p@ss@h/0", "redis://:***@h/0"),  # the last @ ends the user info
        ("redis://h/0?password=pw&db=1", "redis://h/0?password=***&db=1"),
        (
            "sentinel://:pw@s1:26379;sentinel://:pw@s2:26379/0",
            "sentinel://:***@s1:26379;sentinel://:***@s2:26379/0",
        ),
    ],
)
def test_redacted_url_hides_every_password(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


@pytest.mark.parametrize(
    "failure",
    [
        # The outbox write (redis-py) and Celery's publish (kombu, after its retries).
        ("outbox", redis.exceptions.ConnectionError("Error 111 connecting. Connection refused.")),
        ("outbox", redis.exceptions.TimeoutError("Timeout reading from socket")),
        ("publish", OperationalError(f"Error 111 connecting to {URL}. Connection refused.")),
    ],
    ids=["outbox-refused", "outbox-timeout", "publish-refused"],
)
def test_enqueue_raises_broker_unavailable_naming_redis_without_its_password(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, password_url: None, failure: tuple
) -> None:
    where, error = failure

    def broken(*_: Any, **__: Any) -> None:
        raise error

    if where == "outbox":
        monkeypatch.setattr(rt.outbox, "add", broken)
    else:
        monkeypatch.setattr(tasks.route, "apply_async", broken)

    with pytest.raises(BrokerUnavailable) as raised:
        producer.enqueue(event())

    message = str(raised.value)
    assert message.startswith("cannot reach Redis (the broker) at redis://:***@127.0.0.1:6390/0: ")
    assert PASSWORD not in message
    assert "were enqueued" not in message and raised.value.enqueued == 0
    # Producers that caught what enqueue raised before still catch it.
    assert isinstance(raised.value, redis.exceptions.ConnectionError | OperationalError)
    assert isinstance(raised.value, PrefsyncError)


def test_enqueue_many_says_how_many_events_went_before_the_broker_failed(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, password_url: None
) -> None:
    sent = broker(monkeypatch, refuse_from=1)
    payloads = [event(f"u-{n}") for n in range(250)]

    with pytest.raises(BrokerUnavailable) as raised:
        producer.enqueue_many(payloads)

    assert raised.value.enqueued == 100
    message = str(raised.value)
    assert message.startswith("cannot reach Redis (the broker) at redis://:***@127.0.0.1:6390/0: ")
    assert message.endswith("; the first 100 event(s) were enqueued, the others were not")
    assert PASSWORD not in message
    assert sent == [("prefsync.route", [payloads[:100]])]


def test_cli_enqueue_stops_at_an_unreachable_broker_and_says_what_was_enqueued(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, password_url: None
) -> None:
    sent = broker(monkeypatch, refuse_from=2)
    lines = [json.dumps(event(f"u-{n}")) for n in range(250)]
    lines[5] = "{not json"

    result = CliRunner().invoke(main, ["enqueue", "-"], input="\n".join(lines))

    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout.strip() == "enqueued 200 event(s), 1 invalid"
    assert result.stderr.startswith("line 6: not valid JSON")
    assert "\nerror: cannot reach Redis (the broker) at redis://:***@" in result.stderr
    # Lines 1-201 hold 200 valid events: the third message starts at line 202.
    assert "line 202 and all after it were not enqueued" in result.stderr
    assert "were enqueued," not in result.stderr  # the CLI's own count, not the producer's
    assert PASSWORD not in result.output
    assert "Traceback" not in result.output
    assert [len(args[0]) for _, args in sent] == [100, 100]
