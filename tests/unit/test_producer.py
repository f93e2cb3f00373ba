"""The producer when Redis cannot take an event: one clear error naming the broker without
its password, and `prefsync enqueue` saying where it stopped, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from kombu.exceptions import OperationalError

from worker import producer, tasks
from worker.cli import main
from worker.errors import BrokerUnavailable, PrefsyncError
from worker.redis_client import redacted_url
from worker.runtime import Runtime
from worker.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PASSWORD = "hunter2-redis-pass"
URL = f"redis://:{PASSWORD}@127.0.0.1:6390/0"


def event(user: str = "jane.doe@example.com") -> dict[str, Any]:
    payload = json.loads((EXAMPLES / "events" / "event-created.json").read_text())
    payload["parameters"]["entity"]["user"]["organization_user_id"] = user
    return payload


@pytest.fixture
def password_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(producer, "get_settings", lambda: Settings(redis_url=URL))


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
    # Producers that caught what enqueue raised before still catch it.
    assert isinstance(raised.value, redis.exceptions.ConnectionError | OperationalError)
    assert isinstance(raised.value, PrefsyncError)


def test_cli_enqueue_stops_at_an_unreachable_broker_and_says_what_was_enqueued(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, password_url: None
) -> None:
    sent: list[Any] = []

    def publish_twice(args: list[Any], **_: Any) -> Any:
        if len(sent) == 2:
            raise OperationalError("Error 111 connecting. Connection refused.")
        sent.append(args)
        return type("AsyncResult", (), {"id": f"task-{len(sent)}"})()

    monkeypatch.setattr(tasks.route, "apply_async", publish_twice)
    lines = [json.dumps(event(f"u-{n}")) for n in range(4)]

    result = CliRunner().invoke(main, ["enqueue", "-"], input="\n".join(lines))

    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert result.stdout.strip() == "enqueued 2 event(s), 0 invalid"
    assert result.stderr.startswith("error: cannot reach Redis (the broker) at redis://:***@")
    assert "line 3 and all after it were not enqueued" in result.stderr
    assert PASSWORD not in result.output
    assert "Traceback" not in result.output
    assert len(sent) == 2
