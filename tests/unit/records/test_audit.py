"""The audit trail: every outcome of an (event, connector) pair lands in the tenant's
bounded stream, and `prefsync audit` answers what each destination was told, and when."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses
import structlog.testing
from click.testing import CliRunner

from tests.unit.conftest import install_runtime
from worker.cli import main
from worker.connectors.config import parse_config
from worker.core.errors import PermanentError
from worker.core.outcomes import Outcome, OutcomeKind
from worker.delivery import pipeline
from worker.delivery.runtime import Runtime
from worker.infra.settings import Settings
from worker.records.deadletter import Attempt
from worker.records.recorder import Ended

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
KEY = "braze-rest-key-abcdef-0123456789"
TRACK = "https://rest.fra-01.braze.eu/users/track"
JANE = "jane.doe@example.com"


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    runtime = install_runtime(monkeypatch, Settings(audit_maxlen=5))
    config = json.loads((EXAMPLES / "connectors" / "braze.json").read_text())
    config["authentication"]["api_key"] = KEY
    runtime.configs.put("acme", parse_config(config))
    return runtime


def event(event_id: str = "e-1", user: str = JANE, **purposes: bool) -> dict[str, Any]:
    payload = json.loads((EXAMPLES / "events" / "event-created.json").read_text())
    entity = payload["parameters"]["entity"]
    entity["id"] = event_id
    entity["user"]["organization_user_id"] = user
    if purposes:
        entity["consents"]["purposes"] = [{"id": p, "enabled": v} for p, v in purposes.items()]
    return payload


@responses.activate
def test_delivered_skipped_and_dead_lettered_outcomes_are_each_audited(rt: Runtime) -> None:
    responses.post(TRACK, status=201, json={"message": "success"})

    assert pipeline.deliver(rt, [event("e-1", newsletter=True)], "braze") == {}
    # the same event again
    assert pipeline.deliver(rt, [event("e-1", newsletter=True)], "braze") == {}
    pipeline.dead_letter(
        rt,
        payload=event("e-2", newsletter=False),
        connector_id="braze",
        attempts=[Attempt(at=1.0, status=400, error="Invalid attribute")],
        exc=PermanentError("Braze refused the update (HTTP 400): Invalid attribute", status=400),
        now=2.0,
    )

    newest_first = rt.audit.query("acme")
    assert [(e.outcome, e.reason) for e in newest_first] == [
        ("dead_lettered", "refused by the destination: Braze refused the update (HTTP 400): "
         "Invalid attribute"),
        ("skipped", "duplicate"),
        ("delivered", ""),
    ]  # fmt: skip
    delivered = newest_first[-1]
    # The trail names the person by the keyed hash of their id, never the id.
    assert delivered.user == rt.pseudonyms.user(JANE) and delivered.connector_id == "braze"
    assert delivered.status == 201
    assert delivered.fields == {"email_subscribe": "opted_in"}
    assert delivered.event_key.startswith("event.created:e-1:")
    assert newest_first[0].status == 400
    everything = json.dumps([e.model_dump() for e in newest_first])
    assert KEY not in everything and JANE not in everything


def test_the_stream_stays_within_its_bound_keeping_the_newest(rt: Runtime) -> None:
    skipped = Outcome(OutcomeKind.SKIPPED, reason="no_mapped_values")
    for n in range(10):
        rt.recorder.record("acme", "braze", [Ended(f"k-{n}", f"u-{n}", skipped)])
    # Several outcomes in one call land in order, within the bound all the same.
    rt.recorder.record("acme", "braze", [Ended(f"k-{n}", f"u-{n}", skipped) for n in (10, 11)])
    assert rt.audit.length("acme") == 5
    assert [e.event_key for e in rt.audit.query("acme")] == [f"k-{n}" for n in range(11, 6, -1)]


def test_cli_audit_filters_by_user_limits_and_prints_json(rt: Runtime) -> None:
    delivered = Outcome(
        OutcomeKind.DELIVERED, status=201, fields={"email_subscribe": "unsubscribed"}
    )
    rt.recorder.record(
        "acme",
        "braze",
        [Ended(f"k-{n}", user, delivered) for n, user in enumerate(["a", "b", "a", "a"])],
    )
    runner = CliRunner()

    text = runner.invoke(main, ["audit", "acme", "--user", "a", "--limit", "2"]).output
    rows = [line.split("\t") for line in text.splitlines()]
    person = rt.pseudonyms.user("a")
    assert [row[1:5] for row in rows] == [["braze", person, "delivered", "HTTP 201"]] * 2
    assert all(row[5] == '{"email_subscribe": "unsubscribed"}' for row in rows)

    as_json = runner.invoke(main, ["audit", "acme", "--user", "b", "--json"]).output
    (only,) = [json.loads(line) for line in as_json.splitlines()]
    assert (only["user"], only["event_key"]) == (rt.pseudonyms.user("b"), "k-1")
    unknown = runner.invoke(main, ["audit", "globex"])  # no rows; it says why on stderr
    assert (unknown.exit_code, unknown.stdout) == (1, "")
    assert "unknown tenant 'globex'" in unknown.stderr


@responses.activate
def test_a_failure_reported_for_a_delivery_that_had_ended_is_not_dead_lettered(
    rt: Runtime,
) -> None:
    # Celery cut the task off (a lost Redis connection) after it delivered, then reported a
    # hard time limit for it: the person's change reached Braze, nothing to hand over.
    responses.post(TRACK, status=201, json={"message": "success"})
    payload = event("e-1", newsletter=True)
    assert pipeline.deliver(rt, [payload], "braze") == {}

    kept = pipeline.dead_letter(
        rt,
        payload=payload,
        connector_id="braze",
        attempts=[Attempt(at=1.0, status=None, error="TimeLimitExceeded(6)")],
        exc=RuntimeError("TimeLimitExceeded(6)"),
        now=2.0,
    )

    assert kept is None
    assert rt.deadletters.count() == 0
    assert [e.outcome for e in rt.audit.query("acme")] == ["delivered"]


def test_a_user_payload_s_event_key_is_audited_as_its_type_and_a_keyed_hash(rt: Runtime) -> None:
    # A user payload's key holds the PMP's id of the person.
    skipped = Outcome(OutcomeKind.SKIPPED, reason="no_mapped_values")
    key = "user.updated:pmp-jane-7:2026-11-20T09:15:02Z"
    rt.recorder.record("acme", "braze", [Ended(key, JANE, skipped)])

    (entry,) = rt.audit.query("acme", user=rt.pseudonyms.user(JANE))
    assert entry.event_key == f"user.updated:{rt.pseudonyms.of('event', key)}"
    assert "pmp-jane-7" not in entry.model_dump_json()


def test_the_outcomes_of_one_call_share_a_stream_entry_and_are_read_one_by_one(
    rt: Runtime,
) -> None:
    delivered = Outcome(OutcomeKind.DELIVERED, status=201, fields={"email_subscribe": "opted_in"})
    skipped = Outcome(OutcomeKind.SKIPPED, reason="stale")
    # What a release before this one wrote: one outcome an entry, still read as it was.
    rt.redis.xadd(
        'prefsync:audit:["acme"]',
        {"at": "3.0", "connector_id": "braze", "event_key": "k-old", "user": "h",
         "outcome": "delivered", "reason": "", "status": "201", "fields": "{}"},
    )  # fmt: skip
    rt.recorder.record("acme", "braze", [Ended("k-0", "a", delivered), Ended("k-1", "b", skipped)])
    rt.recorder.record("acme", "braze", [Ended("k-2", "a", delivered)])

    assert rt.redis.xlen('prefsync:audit:["acme"]') == 3
    entries = rt.audit.query("acme")
    assert [(e.event_key, e.outcome, e.reason) for e in entries] == [
        ("k-2", "delivered", ""),
        ("k-1", "skipped", "stale"),
        ("k-0", "delivered", ""),
        ("k-old", "delivered", ""),
    ]
    assert len({e.id for e in entries}) == 4
    assert entries[2].fields == {"email_subscribe": "opted_in"} and entries[2].status == 201
    assert [e.event_key for e in rt.audit.query("acme", user=rt.pseudonyms.user("a"))] == [
        "k-2",
        "k-0",
    ]
    # The bound counts outcomes (5 here); the oldest entries go whole once it is passed.
    assert rt.audit.length("acme") == 4
    rt.recorder.record("acme", "braze", [Ended(f"k-{n}", "c", skipped) for n in (3, 4)])
    assert rt.audit.length("acme") == 5
    assert [e.event_key for e in rt.audit.query("acme")] == ["k-4", "k-3", "k-2", "k-1", "k-0"]
    rt.recorder.record("acme", "braze", [Ended("k-5", "c", skipped)])
    assert rt.audit.length("acme") == 4
    assert [e.event_key for e in rt.audit.query("acme")] == ["k-5", "k-4", "k-3", "k-2"]


def test_one_log_line_says_what_a_call_delivered_and_each_skip_has_its_own(rt: Runtime) -> None:
    delivered = Outcome(OutcomeKind.DELIVERED, status=201)
    skipped = Outcome(OutcomeKind.SKIPPED, reason="stale")
    with structlog.testing.capture_logs() as logs:
        rt.recorder.record(
            "acme",
            "braze",
            [
                Ended("k-0", "a", delivered),
                Ended("k-1", "b", delivered),
                Ended("k-2", "c", skipped),
            ],
        )
        rt.recorder.record("acme", "braze", [Ended("k-3", "d", delivered)])
    lines = [(line["event"], line.get("event_keys") or line.get("event_key")) for line in logs]
    assert lines == [
        ("delivered", ["k-0", "k-1"]),
        ("skipped", "k-2"),
        ("delivered", "k-3"),
    ]
    assert logs[0]["count"] == 2
    assert logs[0]["outcomes"] == {"delivered": 2, "skipped": 1, "skipped:stale": 1}
    assert logs[2]["user"] == "d"
