"""A Redis user per component, each allowed only what its job needs (Redis ACLs).

- ``worker``: the broker's keys and prefsync's data (configs, state, audit, dead letters…);
  no administration (``-@dangerous``: no FLUSHALL, CONFIG, KEYS, DEBUG…).
- ``producer`` (``prefsync enqueue``, the Python producer, the HTTP ingress): may enqueue
  (the queues of both lanes, kombu's bindings, prefsync's outbox, parked bulk loads), keep
  ingress credentials and read the metrics the workers count (``/metrics``); cannot read
  connector configs, people's state, the audit trail or dead letters.
- ``flower``: may read the queues and follow the workers' events; cannot write a queue (so
  it cannot send tasks) and gets ``NOPERM`` on every prefsync key.
- ``admin`` (the ``prefsync`` CLI of an operator): everything but administering Redis.
- ``default`` is off: a client without a user and password is refused.

Passwords are stored as SHA-256 hashes (``#<hex>``): the ACL file holds no password, and
none is ever on a command line. ``prefsync redis-acl`` prints the file from the passwords in
``REDIS_<COMPONENT>_PASSWORD`` variables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

# Key patterns of the Celery broker (kombu's Redis transport): the queues (and their
# priority variants), the exchange bindings, unacknowledged messages, and the reply queues
# of remote control (inspect, ping).
_BROKER = "~celery* ~_kombu.* ~unacked ~unacked_index ~unacked_mutex"

# The exchanges kombu binds queues with an expiry to: the workers' events, their remote
# control and its replies.
_EXPIRING_BINDINGS = " ".join(
    f"~_kombu.binding.{exchange} ~_kombu.binding_permanent.{exchange}"
    for exchange in ("celeryev", "celery.pidbox", "reply.celery.pidbox")
)

RULES: dict[str, str] = {
    "worker": "~* &* +@all -@dangerous +info",
    "admin": "~* &* +@all -@dangerous +info",
    "producer": (
        f"{_BROKER} ~prefsync:outbox ~prefsync:outbox:due ~prefsync:ingress:* "
        # Bulk loads parked per tenant (worker.records.feeder).
        "~prefsync:bulk:* "
        # The ingress's /metrics: the workers' counters and the dead letters' count.
        "%R~prefsync:metrics:* %R~prefsync:deadletters:order %R~prefsync:deadletters:bytes &* "
        "-@all +@connection +@transaction +@read +@write +@scripting +time -@dangerous"
    ),
    "flower": (
        # The queues' lengths: LLEN alone, no command that returns a message.
        "%R~celery* "
        # Its inspection replies (and their priority variants: a two-byte separator and a
        # digit).
        "~*.reply.celery.pidbox ~*.reply.celery.pidbox??[369] "
        # kombu binds its reply queue and its queue of the workers' events with an expiry
        # and keeps their deadlines with scripts (EVALSHA), sweeping tables past theirs;
        # a script's commands are held to these same rules. Only the exchanges of those
        # expiring queues: never the bindings of a task queue.
        f"{_EXPIRING_BINDINGS} ~_kombu.binding_deadlines &* "
        "-@all +@connection +@transaction +@pubsub +llen +brpop +del +pexpire +exists +sadd "
        "+srem +zadd +zrangebyscore +zrem +time +evalsha +script|load +script|exists"
    ),
}
COMPONENTS = tuple(RULES)


def password_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def render(passwords: Mapping[str, str]) -> str:
    """An ACL file (``aclfile``) with a user per component given a password."""
    unknown = set(passwords) - set(RULES)
    if unknown:
        raise ValueError(f"no such component: {', '.join(sorted(unknown))}")
    lines = ["user default off resetkeys resetchannels -@all"]
    for name, password in passwords.items():
        if not password:
            raise ValueError(f"the {name} password is empty")
        rules = RULES[name]
        lines.append(f"user {name} on {password_hash(password)} resetkeys resetchannels {rules}")
    return "\n".join(lines) + "\n"
