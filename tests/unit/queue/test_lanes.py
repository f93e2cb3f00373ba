# ruff: noqa: F811 (the fixtures of the task harness, imported to be used here)
"""Lanes: which queue each publish chooses, and that a message's lane and destination type
stay with it through the fan-out, a retry, a deferral, a split, the outbox's copy and a
dead letter's replay (worker.queue.lanes)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from celery import states
from celery.exceptions import SoftTimeLimitExceeded

import worker.connectors.braze
import worker.queue.lanes
import worker.queue.publishing
import worker.queue.sweeps
import worker.records.configs
import worker.records.feeder
from tests.unit.queue.harness import (  # noqa: F401 (fixtures)
    BREVO_UPDATE,
    SUCCESS,
    TENANT,
    UNAVAILABLE,
    Harness,
    answers,
    braze_config,
    brevo_config,
    event,
    event_of,
    harness,
    no_sleep,
    settings,
)
from tests.unit.test_producer import broker
from worker.connectors.base import Connector, Delivered
from worker.queue.app import app
from worker.queue.lanes import BULK, LIVE, queue_for, queues
from worker.queue.tasks import deliver, route
from worker.records.configs import Destinations
from worker.records.feeder import parked_key

BULK_BRAZE = {"lane": BULK, "destination": "braze"}


def routed_to(name: str, kwargs: dict[str, Any], options: dict[str, Any] | None = None) -> str:
    """The queue Celery publishes a message of task ``name`` to (its router, as at every
    publish, Celery's own retries included)."""
    return app.amqp.router.route(options or {}, name, [], kwargs)["queue"].name


def test_the_queues_live_before_bulk_deliveries_before_routing() -> None:
    assert queues() == [
        "celery.braze",
        "celery.sendinblue",
        "celery",
        "celery.bulk.braze",
        "celery.bulk.sendinblue",
        "celery.bulk",
    ]
    # A worker without -Q consumes them all, in that order (kombu's priority strategy).
    assert list(app.amqp.queues) == queues()
    assert app.conf.broker_transport_options["queue_order_strategy"] == "priority"


def test_a_third_destination_type_gets_its_queues_from_the_registry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    third = type("Third", (Connector,), {"type_id": "third"})
    monkeypatch.setitem(worker.queue.lanes.CONNECTORS, "third", third)

    assert "celery.third" in queues() and "celery.bulk.third" in queues()
    assert queue_for("prefsync.deliver", {"lane": BULK, "destination": "third"}) == (
        "celery.bulk.third"
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "queue"),
    [
        ("prefsync.route", {}, "celery"),  # a producer that knows nothing of lanes: live
        ("prefsync.route", {"lane": LIVE}, "celery"),
        ("prefsync.route", {"lane": BULK}, "celery.bulk"),
        ("prefsync.deliver", {"destination": "braze"}, "celery.braze"),
        ("prefsync.deliver", {"destination": "sendinblue"}, "celery.sendinblue"),
        ("prefsync.deliver", BULK_BRAZE, "celery.bulk.braze"),
        ("prefsync.deliver", {"lane": BULK, "destination": "sendinblue"}, "celery.bulk.sendinblue"),
        # Its config unreadable: the lane's routing queue, where it dead-letters at once.
        ("prefsync.deliver", {"lane": BULK, "destination": None}, "celery.bulk"),
        ("prefsync.deliver", {"destination": "nonsense"}, "celery"),
    ],
)
def test_each_message_goes_to_the_queue_of_its_lane_and_destination(
    name: str, kwargs: dict[str, Any], queue: str
) -> None:
    assert queue_for(name, kwargs) == queue
    assert routed_to(name, kwargs) == queue


def test_a_retry_celery_publishes_itself_keeps_its_queue() -> None:
    # Celery's retry passes the message's delivery info along: the same queue comes out.
    options = {"exchange": "celery.bulk.braze", "routing_key": "celery.bulk.braze"}
    assert routed_to("prefsync.deliver", BULK_BRAZE, options) == "celery.bulk.braze"


def test_tasks_that_are_not_prefsyncs_go_where_celery_sends_them() -> None:
    assert worker.queue.lanes.route_for("celery.ping", [], {}, {}) is None


def test_the_destination_type_is_read_once_in_a_while_and_none_when_unreadable(
    harness: Harness,
) -> None:
    connector_id = brevo_config(harness)
    now = [0.0]
    reads = []
    configs = harness.rt.configs

    class Counting:
        def get(self, tenant: str, connector_id: str) -> Any:
            reads.append(connector_id)
            return configs.get(tenant, connector_id)

    destinations = Destinations(Counting(), now=lambda: now[0])  # type: ignore[arg-type]
    assert destinations.type_of(TENANT, connector_id) == "sendinblue"
    assert destinations.type_of(TENANT, connector_id) == "sendinblue"
    assert reads == [connector_id]
    now[0] += worker.records.configs.TYPE_TTL
    assert destinations.type_of(TENANT, "gone") is None
    assert destinations.type_of(TENANT, connector_id) == "sendinblue"
    assert reads == [connector_id, "gone", connector_id]


# -- the lane goes along ---------------------------------------------------------------------


def test_a_bulk_route_fans_out_to_bulk_deliveries_queued_by_destination_type(
    harness: Harness,
) -> None:
    braze = braze_config(harness)
    brevo = brevo_config(harness)

    worker.queue.publishing.publish(route, [[event()]], {"lane": BULK, "enqueued_at": 1.0})
    harness.worker.execute(harness.broker.queue.pop())

    fanned = {m.args[1]: m for m in harness.broker.queue}
    assert {c: queue_for(m.task, m.kwargs) for c, m in fanned.items()} == {
        braze: "celery.bulk.braze",
        brevo: "celery.bulk.sendinblue",
    }
    assert fanned[braze].kwargs == {"enqueued_at": 1.0, **BULK_BRAZE}


def test_a_live_route_fans_out_to_live_deliveries(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    braze_config(harness)
    answers(harness, mocked, [(201, SUCCESS, {})])

    harness.worker.send(route, [event()])
    runs = harness.worker.drain()

    assert [queue_for(r.message.task, r.message.kwargs) for r in runs] == [
        "celery",
        "celery.braze",
    ]
    assert runs[-1].state == states.SUCCESS


def test_a_retry_stays_in_its_lane_and_queue(
    harness: Harness, mocked: responses.RequestsMock
) -> None:
    connector_id = braze_config(harness)
    answers(harness, mocked, [(503, UNAVAILABLE, {}), (201, SUCCESS, {})])

    worker.queue.publishing.publish(deliver, [[event()], connector_id], BULK_BRAZE)
    runs = harness.worker.drain()

    assert [r.state for r in runs] == [states.RETRY, states.SUCCESS]
    retry = runs[1].message
    assert retry.retries == 1
    assert queue_for(retry.task, retry.kwargs) == "celery.bulk.braze"


def test_a_deferral_stays_in_its_lane_and_queue(
    harness: Harness, mocked: responses.RequestsMock, no_sleep: None
) -> None:
    connector_id = brevo_config(harness, batch_size=1)
    answers(harness, mocked, [(204, None, {})], method="PUT", url=BREVO_UPDATE)
    kwargs = {"lane": BULK, "destination": "sendinblue"}
    users = [f"u{n}@example.com" for n in range(2)]

    worker.queue.publishing.publish(deliver, [[event_of(u) for u in users], connector_id], kwargs)
    harness.worker.execute(harness.broker.queue.pop())  # the second call must wait its slot

    [deferred] = harness.broker.queue
    assert deferred.args[0] == [event_of(users[1])] and deferred.countdown
    assert queue_for(deferred.task, deferred.kwargs) == "celery.bulk.sendinblue"


def test_a_split_stays_in_its_lane_and_queue(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    calls = []

    def slow_once(self: Any, transport: Any, config: Any, changes: Any) -> Any:
        calls.append(len(changes))
        if len(calls) == 1:
            raise SoftTimeLimitExceeded()
        return [Delivered(201, {})] * len(changes)

    monkeypatch.setattr(worker.connectors.braze.BrazeConnector, "deliver_many", slow_once)
    batch = [event_of("a@example.com"), event_of("b@example.com")]

    worker.queue.publishing.publish(deliver, [batch, connector_id], BULK_BRAZE)
    runs = harness.worker.drain()

    assert calls == [2, 1, 1]
    split = [r.message for r in runs[1:]]
    assert [m.args[0] for m in split] == [[p] for p in batch]
    assert {queue_for(m.task, m.kwargs) for m in split} == {"celery.bulk.braze"}


def test_the_outbox_publishes_a_lost_message_again_into_its_own_queue(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    connector_id = braze_config(harness)
    worker.queue.publishing.publish(deliver, [[event()], connector_id], BULK_BRAZE)
    [lost] = harness.broker.queue
    harness.broker.queue.clear()
    harness.clock.now += harness.rt.outbox.grace + 1
    waiting = {name: 0 for name in queues()}
    monkeypatch.setattr(worker.queue.sweeps, "queue_lengths", lambda names: waiting)

    waiting["celery.bulk.braze"] = 1  # a backlog in its queue: it may be one of them
    worker.queue.sweeps.OutboxSweep(None).sweep()
    assert harness.broker.queue == []

    waiting["celery.bulk.braze"], waiting["celery"] = 0, 5  # other queues do not matter
    worker.queue.sweeps.OutboxSweep(None).sweep()
    [again] = harness.broker.queue
    assert (again.task_id, again.kwargs) == (lost.task_id, lost.kwargs)
    assert queue_for(again.task, again.kwargs) == "celery.bulk.braze"


# -- what the producer and the CLI choose ----------------------------------------------------


def kwargs_published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict[str, Any]]]:
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(task: Any) -> Any:
        def apply_async(args: list[Any], kwargs: dict[str, Any], **_: Any) -> Any:
            sent.append((task.name, kwargs))
            return type("AsyncResult", (), {"id": "t"})()

        return apply_async

    for task in (route, deliver):
        monkeypatch.setattr(task, "apply_async", capture(task))
    return sent


def test_dlq_replay_of_named_entries_is_live_of_all_of_them_bulk(
    rt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.cli.test_cli import dead_letter, run

    sent = kwargs_published(monkeypatch)
    first = dead_letter(rt, "acme", "braze", 1)
    unrouted = dead_letter(rt, "acme", "", 2)

    assert run("dlq", "replay", first).exit_code == 0
    dead_letter(rt, "acme", "braze", 3)
    assert run("dlq", "replay", "--all").exit_code == 0

    assert [(name, queue_for(name, kwargs)) for name, kwargs in sent] == [
        ("prefsync.deliver", "celery"),
        ("prefsync.route", "celery.bulk"),  # the entry refused before it was routed
        ("prefsync.deliver", "celery.bulk"),
    ]
    assert rt.deadletters.get(unrouted) is None


def test_the_producer_api_is_live_unless_told_or_large(
    rt: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.unit.test_producer import event as producer_event
    from worker import producer

    sent = broker(monkeypatch)
    producer.enqueue(producer_event())
    producer.enqueue_many([producer_event()] * 3)
    assert [name for name, _ in sent] == ["prefsync.route"] * 2
    assert rt.feeder.parked() == {}

    producer.enqueue_many([producer_event()] * 3, bulk=True)
    producer.enqueue_many([producer_event()] * (producer.BULK_ABOVE + 1))
    assert len(sent) == 2  # parked, not published
    assert rt.feeder.parked() == {"acme": 1 + producer.BULK_ABOVE // producer.MAX_BATCH + 1}
    [parked] = [json.loads(raw) for raw in rt.redis.lrange(parked_key("acme"), 0, 0)]
    assert queue_for(parked["name"], parked["kwargs"]) == "celery.bulk"


# -- which queues a worker consumes ----------------------------------------------------------


def worker_queues(monkeypatch: pytest.MonkeyPatch, *options: str) -> list[str] | None:
    """The queues `prefsync worker OPTIONS` has Celery consume (None: every queue)."""
    from click.testing import CliRunner

    import worker.cli
    import worker.infra.redis_client

    execed: list[list[str]] = []
    monkeypatch.setattr(worker.infra.redis_client, "connect", lambda *_, **__: FakeRedis())
    monkeypatch.setattr("os.execvp", lambda _, argv: execed.append(argv))
    result = CliRunner().invoke(worker.cli.main, ["worker", *options])
    assert result.exit_code == 0, result.output
    chosen = [arg for arg in execed[0] if arg.startswith("--queues=")]
    return chosen[0].removeprefix("--queues=").split(",") if chosen else None


def test_prefsync_worker_consumes_every_queue_unless_told_which(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert worker_queues(monkeypatch) is None  # Celery's default: every queue of task_queues
    assert worker_queues(monkeypatch, "--lane", "live") == [
        "celery.braze",
        "celery.sendinblue",
        "celery",
    ]
    assert worker_queues(monkeypatch, "--destination", "sendinblue") == [
        "celery.sendinblue",
        "celery.bulk.sendinblue",
    ]
    assert worker_queues(monkeypatch, "--without-destination", "sendinblue") == [
        "celery.braze",
        "celery",
        "celery.bulk.braze",
        "celery.bulk",
    ]
    assert worker_queues(monkeypatch, "--lane", "bulk", "--destination", "braze") == [
        "celery.bulk.braze"
    ]


def test_the_compose_workers_together_consume_every_queue(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import yaml

    from tests.unit.test_compose import ROOT, argv

    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    consumed: set[str] = set()
    commands = [argv(s) for s in services.values() if "command" in s]
    workers = [c[2:] for c in commands if c[:2] == ["prefsync", "worker"]]
    assert len(workers) == 2
    for options in workers:
        chosen = worker_queues(monkeypatch, *_lane_options(options))
        consumed |= set(chosen or queues())
    assert consumed == set(queues())


def _lane_options(options: list[str]) -> list[str]:
    """The lane and destination options of a worker's command (not its ${VARIABLES})."""
    kept = []
    for option, value in zip(options, [*options[1:], ""], strict=True):
        if option in ("--lane", "--destination", "--without-destination"):
            kept += [option, value]
    return kept


class FakeRedis:
    def ping(self) -> bool:
        return True


def test_the_workers_feeder_publishes_parked_messages_into_the_bulk_lane_under_its_bound(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    parked = [(f"t-{n}", route.name, [[event()]], {"lane": BULK}) for n in range(3)]
    harness.rt.feeder.park(TENANT, parked)
    waiting = dict.fromkeys(queues(), 0)
    monkeypatch.setattr(
        worker.queue.sweeps, "queue_lengths", lambda names: {n: waiting[n] for n in names}
    )

    waiting["celery"] = 1_000  # a live backlog does not hold bulk back from the queues
    waiting["celery.bulk.braze"] = worker.records.feeder.QUEUED - 2
    assert worker.queue.sweeps.feed_bulk() == 2

    fed = harness.broker.queue
    assert [m.task_id for m in fed] == ["t-0", "t-1"]  # the ids given at parking
    assert {queue_for(m.task, m.kwargs) for m in fed} == {"celery.bulk"}
    assert harness.rt.outbox.entry("t-0") is not None  # published through the outbox
    assert harness.rt.feeder.parked() == {TENANT: 1}


def test_prefsync_stats_shows_the_bulk_messages_parked_per_tenant(rt: Any) -> None:
    from tests.unit.cli.test_cli import run

    rt.feeder.park("acme", [("t-1", route.name, [[event()]], {"lane": BULK})] * 2)
    rt.feeder.park("globex", [("t-2", route.name, [[event()]], {"lane": BULK})])

    shown = run("stats", "--tenant", "acme").output.splitlines()

    assert "bulk messages parked for acme\t2" in shown
    assert not any("globex" in line for line in shown)
