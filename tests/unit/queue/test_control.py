"""Remote control (worker.queue.control): the pidbox's command table answers inspection and
refuses every command that steers a worker, unless PREFSYNC_WORKER_REMOTE_CONTROL opts in;
inspection lists a task by its summary."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from celery.contrib.testing.mocks import TaskMessage
from celery.utils.collections import AttributeDict
from celery.utils.imports import symbol_by_name
from celery.worker import control, state
from kombu.utils import json as kombu_json

import worker.queue.tasks  # noqa: F401  (the tasks, registered)
from worker.queue.app import app
from worker.queue.control import INSPECTION, RemoteControl, RequestWithoutPeople, commands

STEERING = [
    "cancel_consumer",
    "add_consumer",
    "shutdown",
    "pool_restart",
    "pool_grow",
    "pool_shrink",
    "autoscale",
    "rate_limit",
    "time_limit",
    "revoke",
    "revoke_by_stamped_headers",
    "terminate",
    "enable_events",
    "disable_events",
    "heartbeat",
    "election",
    "objgraph",
    "memdump",
]


@pytest.mark.parametrize("command", STEERING)
def test_a_command_that_steers_a_worker_is_refused_with_an_error_naming_the_setting(command):
    handler = commands(obey_control=False)[command]
    reply = handler(AttributeDict(app=app), queue="celery", task_id="x")
    assert "PREFSYNC_WORKER_REMOTE_CONTROL" in reply["error"]
    assert reply["error"].startswith(f"{command} refused")


def test_inspection_and_its_aliases_are_answered_by_celery():
    table = commands(obey_control=False)
    for name in INSPECTION - {"hello"}:
        assert table[name] is control.Panel.data[name], name
    assert table["dump_active"] is control.active and table["dump_tasks"] is control.registered
    assert table["ping"](AttributeDict(app=app)) == {"ok": "pong"}


def test_every_command_is_obeyed_when_the_operator_opts_in():
    assert commands(obey_control=True) == control.Panel.data


def test_hello_from_a_starting_worker_revokes_nothing_without_remote_control(monkeypatch):
    monkeypatch.setattr(state, "revoked", state.LimitedSet(maxlen=10))
    node = AttributeDict(app=app, hostname="w1@host")
    reply = commands(obey_control=False)["hello"](node, from_node="w2@host", revoked=["t-1"])
    assert "t-1" not in state.revoked and "clock" in reply
    commands(obey_control=True)["hello"](node, from_node="w2@host", revoked=["t-1"])
    assert "t-1" in state.revoked


def test_the_bootstep_puts_the_table_in_the_pidbox_celery_built(monkeypatch):
    node = SimpleNamespace(handlers=control.Panel.data)
    box = SimpleNamespace(node=node)
    consumer = SimpleNamespace(
        blueprint=SimpleNamespace(
            steps={"celery.worker.consumer.control.Control": SimpleNamespace(box=box)}
        )
    )
    RemoteControl(consumer)
    assert "PREFSYNC_WORKER_REMOTE_CONTROL" in node.handlers["shutdown"](None)["error"]
    assert control.Panel.data["shutdown"] is control.shutdown  # Celery's own table untouched


def test_a_listed_task_shows_its_summary_never_its_events():
    task = app.tasks["prefsync.deliver"]
    request_class = symbol_by_name(task.Request)
    assert request_class is RequestWithoutPeople
    message = TaskMessage(
        task.name,
        args=[[{"user": "alice@example.com"}], "braze"],
        kwargs={"destination": "braze"},
        argsrepr='{"events": 1}',
        kwargsrepr='{"destination": "braze"}',
    )
    shown = request_class(message, app=app, task=task).info(safe=False)  # as `active` asks
    assert shown["args"] == '{"events": 1}' and "alice" not in repr(shown)


def test_the_broker_options_a_worker_reports_in_its_stats_are_json():
    assert "sentinel_kwargs" in app.conf.broker_transport_options
    kombu_json.dumps(app.conf.broker_transport_options)
