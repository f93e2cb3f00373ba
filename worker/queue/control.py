"""Remote control: which commands a worker obeys on its pidbox, where Flower, `celery
inspect` and `celery control` reach it.

Anyone who may publish on the broker may broadcast a command, Flower's Redis user included.
Celery's switch (``worker_enable_remote_control``) is all or nothing, and Flower needs the
inspection commands. So a consumer bootstep puts its own command table in the pidbox:
inspection answered; every command that changes what the worker does (stop consuming a
queue, shut down, restart or shrink the pool, revoke a task, set rate or time limits, stop
its events…) answered with an error, unless PREFSYNC_WORKER_REMOTE_CONTROL opts in. And a
task, listed by inspection, shows its message's summary (worker.queue.display), never its
events.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import structlog
from celery import bootsteps
from celery.worker import control
from celery.worker.consumer.control import Control
from celery.worker.request import Request
from kombu.pidbox import Mailbox
from kombu.transport.redis import Channel as RedisChannel

from worker.infra.settings import get_settings

log = structlog.get_logger("prefsync.control")

#: What Flower and `celery inspect` ask: answered whatever the setting. ``hello`` is how a
#: starting worker syncs with the others (mingle).
INSPECTION = frozenset(
    {
        "ping",
        "stats",
        "clock",
        "report",
        "conf",
        "active_queues",
        "registered",
        "active",
        "reserved",
        "scheduled",
        "revoked",
        "query_task",
        "hello",
    }
)

Handler = Callable[..., Any]


def commands(obey_control: bool) -> dict[str, Handler]:
    """The pidbox's command table: Celery's, with what may not run refused."""
    names = {
        name: control.Panel.meta[name].alias for name in control.Panel.meta if name in INSPECTION
    }
    answered = set(names) | {alias for alias in names.values() if alias}
    table: dict[str, Handler] = {}
    for name, handler in control.Panel.data.items():
        if obey_control:
            table[name] = handler
        elif name not in answered:
            table[name] = partial(_refused, name)
        elif handler is control.hello:
            table[name] = _hello_keeping_revoked
        else:
            table[name] = handler
    return table


def _refused(command: str, state: Any, **_: Any) -> dict[str, str]:
    log.warning("remote control command refused", command=command)
    return control.nok(
        f"{command} refused: this worker answers inspection only "
        "(PREFSYNC_WORKER_REMOTE_CONTROL=true makes it obey control commands)"
    )


def _hello_keeping_revoked(state: Any, from_node: str, revoked: Any = None, **kwargs: Any) -> Any:
    # A starting worker passes the task ids it knows revoked, which the others merge and then
    # discard those tasks: a revoke by another name. Without remote control no task is
    # revoked, so there is nothing to merge.
    return control.hello(state, from_node, **kwargs)


class RemoteControl(bootsteps.Step):
    """Consumer bootstep: the pidbox Celery's ``Control`` step built answers from
    ``commands``'s table."""

    requires = (Control,)

    def __init__(self, consumer: Any, **kwargs: Any) -> None:
        box = consumer.blueprint.steps[Control.name].box
        box.node.handlers = commands(get_settings().worker_remote_control)
        super().__init__(consumer, **kwargs)


class RequestWithoutPeople(Request):
    """A task as inspection lists it (``active``, ``reserved``, ``scheduled``,
    ``query_task``): its message's ``argsrepr`` and ``kwargsrepr`` always, whatever the
    caller asked; never the events, which name people."""

    def info(self, safe: bool = False) -> dict[str, Any]:
        return super().info(safe=True)


def replies_only_to_reply_queues() -> None:
    """A worker's reply to a control command goes to the asking reply queue, nowhere else.

    The asker names where the reply goes (``reply_to``), and anyone who may publish on the
    broker may ask: Flower's Redis user could name the anonymous exchange (so any list:
    ``prefsync:bulk:acme``) or bind a list of prefsync's to the reply exchange (it may add
    that exchange's bindings, to declare its own reply queue). So a reply is published only
    to the reply exchange, and that exchange routes a reply only to the queue named after
    its routing key, as kombu's own reply queues are (``<oid>.reply.celery.pidbox``)."""
    publish_reply = Mailbox._publish_reply
    lookup = RedisChannel._lookup

    def _publish_reply(
        self: Mailbox, reply: Any, exchange: Any, routing_key: str, *args: Any, **kw: Any
    ) -> None:
        if exchange != self.reply_exchange.name:
            log.warning("control reply not sent: not to the reply exchange", exchange=str(exchange))
            return None
        return publish_reply(self, reply, exchange, routing_key, *args, **kw)

    def _lookup(self: RedisChannel, exchange: str, routing_key: str, default: Any = None) -> Any:
        queues = lookup(self, exchange, routing_key, default)
        if exchange.startswith("reply.") and exchange.endswith(".pidbox"):
            return [queue for queue in queues if queue == f"{routing_key}.{exchange}"]
        return queues

    Mailbox._publish_reply = _publish_reply
    RedisChannel._lookup = _lookup
