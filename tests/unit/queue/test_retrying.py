"""Retries (worker.queue.retrying): six attempts at fixed offsets from the first, inside
five minutes; none for an answer that will not change; a rate-limited retry waits for the
reset."""

from __future__ import annotations

from typing import Any

import pytest
import responses
from celery import states
from structlog.testing import capture_logs

import worker.delivery.pipeline
from tests.unit.queue.harness import (
    BREVO_UPDATE,
    JITTER,
    OFFSETS,
    START,
    SUCCESS,
    TENANT,
    UNAVAILABLE,
    USER,
    Harness,
    answers,
    braze_config,
    brevo_config,
    event,
    sent_body,
)
from worker.core.events import parse_event
from worker.infra.settings import DEFAULT_RETRY_COUNTDOWNS, Settings, get_settings
from worker.queue.tasks import deliver

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


def test_each_run_parses_its_events_once_for_its_delivery_retry_and_dead_letter(
    harness: Harness, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {})])
    event_key = parse_event(event()).event_key
    parsed: list[Any] = []
    real_parse_event = worker.delivery.pipeline.parse_event

    def counted(payload: Any, **options: Any) -> Any:
        parsed.append(payload)
        return real_parse_event(payload, **options)

    monkeypatch.setattr(worker.delivery.pipeline, "parse_event", counted)

    harness.worker.send(deliver, [event()], connector_id)
    with capture_logs() as logs:
        runs = harness.worker.drain()

    # Six runs, six parses: the retry's log line and the dead letter use the run's own.
    assert len(runs) == 6
    assert len(parsed) == 6
    retried = [line["event_key"] for line in logs if line["event"] == "retry scheduled"]
    assert retried == [event_key] * 5
    [entry] = harness.dead_letters()
    assert entry.event_key == event_key


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


# -- settings ----------------------------------------------------------------------------------


def test_retry_countdowns_longer_than_the_visibility_timeout_allows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"visibility_timeout \(100s\) must exceed"):
        Settings(retry_countdowns=(10.0, 30.0, 90.0), visibility_timeout=100)
    with pytest.raises(ValueError, match="visibility_timeout"):
        Settings(retry_countdowns=(1.0, 2.0), rate_limit_max_wait=30.0, visibility_timeout=60)
    # With room for the longest wait plus the time limit, it starts.
    Settings(retry_countdowns=(10.0, 30.0, 90.0), task_time_limit=60, visibility_timeout=200)
