"""What workers record for /metrics (worker.records.metrics, written by the recorder and the outbox)
and how /metrics shows it (worker.ingress.metrics). Redis is fakeredis, HTTP ``responses``."""

from __future__ import annotations

import pytest
import responses
from prometheus_client.parser import text_string_to_metric_families

# ruff: noqa: F811 (the fixtures of test_delivery, imported to be used here)
from tests.unit.conftest import install_runtime
from tests.unit.delivery.test_deliverer import (  # noqa: F401
    NEWSLETTER,
    brevo,
    brevo_url,
    event,
    rt,
    update_url,
)
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import RetryableError
from worker.core.events import parse_event
from worker.core.retries import clock
from worker.delivery.runtime import Runtime
from worker.infra.settings import Settings
from worker.ingress.metrics import IngressMetrics
from worker.queue import lanes
from worker.records import metrics
from worker.records.deadletter import Attempt

TENANT = "acme"


def test_a_delivery_counts_outcomes_answers_429s_and_latency_by_connector_type(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    # Given Brevo accepting the first user and rate-limiting the second,
    mocked.put(update_url("u1"), status=204)
    mocked.put(update_url("u2"), status=429, headers={"x-sib-ratelimit-reset": "1"})
    payloads = [event(f"e-{n}", 1, f"u{n}", newsletter=False) for n in (1, 2)]

    # when a batch enqueued two seconds ago is delivered,
    unfinished = rt.deliverer.deliver(
        TENANT, [parse_event(p) for p in payloads], brevo, enqueued_at=clock() - 2.0
    )

    # then the second user waits for a retry, and the figures say what happened.
    assert list(unfinished) == [1]
    counters = metrics.read_counters(rt.redis)
    assert counters.outcomes == {("sendinblue", "delivered", ""): 1}
    assert counters.answers == {("sendinblue", "2xx"): 1, ("sendinblue", "4xx"): 1}
    assert counters.rate_limited == {"sendinblue": 1}
    buckets, total, count = counters.latency["sendinblue"]
    assert count == 1 and 2.0 <= total < 2.5
    assert buckets[metrics.LATENCY_BUCKETS.index(2.5)] == 1 and sum(buckets) == 1


def test_a_skip_is_counted_with_its_reason_and_a_delivery_without_enqueue_time_has_no_latency(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    payload = event("e-1", 1, "u1", newsletter=True)

    rt.deliverer.deliver(TENANT, [parse_event(payload)], brevo)
    rt.deliverer.deliver(TENANT, [parse_event(payload)], brevo)

    counters = metrics.read_counters(rt.redis)
    assert counters.outcomes == {
        ("sendinblue", "delivered", ""): 1,
        ("sendinblue", "skipped", "duplicate"): 1,
    }
    assert counters.latency == {}


def test_backlog_counts_queue_waiting_retries_outbox_dead_letters_and_the_oldest_due(
    rt: Runtime,
) -> None:
    # Given two messages queued, a task published 30 s ago, one whose retry waits 60 s
    # more, and a dead letter,
    now = clock()
    rt.redis.lpush("celery", "m1", "m2")
    rt.outbox.add("t-old", "prefsync.route", [[]], {}, now - 30)
    rt.outbox.add("t-retry", "prefsync.deliver", [[], "braze"], {}, now, wait=60)
    rt.deadletters.add(
        tenant=TENANT,
        connector_id="braze",
        user="u1",
        event_key="k",
        payload={},
        attempts=[Attempt(at=now, error="HTTP 400")],
        reason="refused",
        dead_lettered_at=now,
    )

    backlog = metrics.read_backlog(rt.redis, "celery", rt.outbox.grace, now)

    assert (backlog.queue_depth, backlog.retries_waiting, backlog.outbox) == (2, 1, 2)
    assert backlog.queue_depths == {"celery": 2}
    assert backlog.dead_letters == 1
    assert 29.9 < backlog.oldest_waiting < 30.1


def test_a_retry_written_to_the_outbox_is_counted_with_it(rt: Runtime) -> None:
    rt.outbox.add("t-1", "prefsync.deliver", [[], "braze"], {}, clock())

    rt.outbox.rescheduled("t-1", [[], "braze"], {"attempts": [1]}, clock(), 10, metrics.count_retry)

    assert metrics.read_counters(rt.redis).retries_scheduled == 1


def test_metrics_exposition_names_every_family_without_tenant_or_user_labels(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    rt.deliverer.deliver(
        TENANT, [parse_event(event("e-1", 1, "u1", newsletter=True))], brevo, enqueued_at=clock()
    )
    exposition = IngressMetrics(rt.settings)
    exposition.webhook(202, 1)

    body, content_type = exposition.exposition()

    assert content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {
        "prefsync_outcomes",
        "prefsync_retries_scheduled",
        "prefsync_destination_answers",
        "prefsync_destination_rate_limited",
        "prefsync_delivery_latency_seconds",
        "prefsync_queue_depth",
        "prefsync_retries_waiting",
        "prefsync_outbox_entries",
        "prefsync_dead_letters",
        "prefsync_oldest_waiting_seconds",
        "prefsync_ingress_requests",
        "prefsync_ingress_events_accepted",
    } <= set(families)
    labels = {name for f in families.values() for s in f.samples for name in s.labels}
    assert not labels & {"tenant", "user", "organization_id", "connector_id"}
    counts = {
        s.labels["connector_type"]: s.value
        for s in families["prefsync_delivery_latency_seconds"].samples
        if s.name.endswith("_count")
    }
    assert counts == {"sendinblue": 1, "braze": 0}  # every type's series exist from the start


def test_a_transient_failure_without_an_answer_is_counted_as_none(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    import requests

    mocked.put(update_url("u1"), body=requests.ConnectionError("refused"))

    unfinished = rt.deliverer.deliver(
        TENANT, [parse_event(event("e-1", 1, "u1", newsletter=True))], brevo
    )

    assert isinstance(unfinished[0], RetryableError)
    assert metrics.read_counters(rt.redis).answers == {("sendinblue", "none"): 1}


@pytest.mark.parametrize("allowed", [False, True])
def test_outcomes_by_tenant_are_recorded_and_shown_only_when_the_setting_allows(
    monkeypatch: pytest.MonkeyPatch, mocked: responses.RequestsMock, allowed: bool
) -> None:
    # Given the setting off (the default) or on, and a tenant id holding a "|",
    settings = Settings(metrics_tenant_label=allowed, rate_limits={"sendinblue": 1000})
    rt = install_runtime(monkeypatch, settings)
    config = parse_config(
        {
            "type_id": "brevo",
            "authentication": {"private_api_key": "xkeysib-TESTKEY-0123456789abcdef"},
            "mappings": [{"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER}],
        }
    )
    mocked.put(update_url("u1"), status=204)

    # when one of its events is delivered and /metrics is asked,
    payload = event("e-1", 1, "u1", newsletter=True, tenant="acme|eu")
    rt.deliverer.deliver("acme|eu", [parse_event(payload)], config)
    body = IngressMetrics(settings).exposition()[0].decode()

    # then the tenant shows only when allowed.
    assert ("prefsync_tenant_outcomes_total" in body) is allowed
    assert ('tenant="acme|eu"' in body) is allowed
    assert '=""' not in body  # a delivery has no reason: no empty label
    expected = {("acme|eu", "sendinblue", "delivered", ""): 1} if allowed else {}
    assert metrics.read_tenant_outcomes(rt.redis) == expected


def test_metrics_show_each_queue_depth_by_queue_and_no_empty_label(
    rt: Runtime, brevo: ConnectorConfig, mocked: responses.RequestsMock
) -> None:
    mocked.put(update_url("u1"), status=204)
    rt.deliverer.deliver(TENANT, [parse_event(event("e-1", 1, "u1", newsletter=True))], brevo)
    rt.redis.lpush("celery", "m1", "m2")
    rt.redis.lpush("celery.bulk.braze", "m3")

    body = IngressMetrics(rt.settings).exposition()[0].decode()

    families = {f.name: f for f in text_string_to_metric_families(body)}
    depths = {s.labels["queue"]: s.value for s in families["prefsync_queue_depth"].samples}
    assert depths == {queue: 0 for queue in lanes.queues()} | {"celery": 2, "celery.bulk.braze": 1}
    delivered = [
        s.labels
        for s in families["prefsync_outcomes"].samples
        if s.labels["outcome"] == "delivered" and s.labels["connector_type"] == "sendinblue"
    ]
    assert delivered == [{"connector_type": "sendinblue", "outcome": "delivered"}]
    assert not [s for f in families.values() for s in f.samples if "" in s.labels.values()]


def test_reconcile_runs_show_per_connector_type_without_tenant_or_connector_id(
    rt: Runtime,
) -> None:
    # Given two reconciles of one Braze connector and one of another tenant's,
    run = metrics.Reconciles("braze", 100.0, "drift", checked=5, drifted=3, fixed=0)
    metrics.record_reconcile(rt.redis, "acme|eu", "braze", run)
    again = metrics.Reconciles("braze", 200.0, "agrees", checked=5, drifted=0, fixed=0)
    metrics.record_reconcile(rt.redis, "acme|eu", "braze", again)
    other = metrics.Reconciles("braze", 150.0, "drift", checked=2, drifted=2, fixed=0)
    metrics.record_reconcile(rt.redis, "beta", "main", other)

    # then each connector keeps its last run and its totals,
    runs = metrics.read_reconciles(rt.redis)
    assert runs[("acme|eu", "braze")].result == "agrees"
    assert runs[("acme|eu", "braze")].drifted_total == 3
    assert runs[("acme|eu", "braze")].checked_total == 10
    # and /metrics sums the last runs by connector type, naming no tenant.
    body = IngressMetrics(rt.settings).exposition()[0].decode()
    families = {f.name: f for f in text_string_to_metric_families(body)}
    drift = {
        s.labels["connector_type"]: s.value for s in families["prefsync_reconcile_drift"].samples
    }
    assert drift == {"braze": 2, "sendinblue": 0}
    last = families["prefsync_reconcile_last_run_timestamp_seconds"].samples
    assert {s.labels["connector_type"]: s.value for s in last}["braze"] == 200.0
    people = {
        (s.labels["connector_type"], s.labels["what"]): s.value
        for s in families["prefsync_reconcile_people"].samples
        if s.name.endswith("_total")
    }
    assert people[("braze", "checked")] == 12
    assert people[("braze", "drifted")] == 5
    assert "acme" not in body and "beta" not in body
