"""A Redis user per component, each allowed only the commands its job needs (Redis ACLs).

- ``worker``: the broker's keys and prefsync's data, with the data commands; prefsync's Lua
  only as the functions the admin loaded (FCALL: no EVAL, no SCRIPT, no FUNCTION LOAD); no
  enumeration of keys (SCAN, KEYS, RANDOMKEY), no administration (``-@dangerous``).
- ``producer`` (``prefsync enqueue``, the Python producer, the HTTP ingress, which faces
  the internet): appends only. LPUSH to the queues, SADD to kombu's bindings, HSETNX to the
  outbox (an entry is added, never changed), RPUSH of a parked bulk load; reads the ingress
  credentials (HGET), the queue lengths and the counters ``/metrics`` shows; no DEL, no
  credential write, no script, no read of a queue's messages.
- ``flower``: may read the queues and follow the workers' events; cannot write a queue (so
  it cannot send tasks) and gets ``NOPERM`` on every prefsync key.
- ``admin`` (the ``prefsync`` CLI of an operator): the worker's rights, plus enumerating
  keys (SCAN) and loading prefsync's functions (FUNCTION LOAD).
- ``default`` is off: a client without a user and password is refused.

Every user may SELECT only the deployment's database (``db``: one database per deployment)
and nobody may FLUSHALL, FLUSHDB, SCRIPT FLUSH, KEYS, CONFIG or DEBUG.

Passwords are stored as SHA-256 hashes (``#<hex>``): the ACL file holds no password, and
none is ever on a command line. ``prefsync redis-acl`` prints the file from the passwords in
``REDIS_<COMPONENT>_PASSWORD`` variables.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

# Data commands that reach outside the deployment's keys or enumerate them: MOVE and COPY
# (to another database), SCAN and RANDOMKEY (a key name is the only way to a person's data,
# so nobody but the admin lists them), OBJECT and DUMP (nothing of prefsync needs them).
_ASIDE = "-move -copy -scan -randomkey -object -dump -rename -renamenx"

# The producer's commands, each on the keys it needs (Redis 7 selectors): every one only
# adds, or reads a count or a credential.
_PRODUCER = (
    "(~celery* +lpush +llen)",  # publish (kombu: one LPUSH); queue depths for /metrics
    # kombu's routing table, read at publish; a queue declared adds itself (SADD).
    "(~_kombu.binding.* ~_kombu.binding_permanent.* +smembers +sadd)",
    "(%W~prefsync:outbox +hsetnx)",  # the outbox: an entry is added, never changed
    "(~prefsync:outbox:due +zadd %R~prefsync:outbox:due +zcard +zcount +zrange)",
    "(%W~prefsync:bulk:* +rpush)",  # a bulk load parked (worker.records.feeder)
    "(%W~prefsync:bulk:tenants +zadd)",
    "(%R~prefsync:ingress:clients +hget)",  # the ingress checks a credential
    "(%R~prefsync:ingress:token:* +get)",  # a token stored in Redis (stored-token format)
    # A tool's refusals (worker.records.signals): which connectors take them, and the
    # inbox they are stored in, each once (prefsync's signals_inbox function: SET NX, RPUSH).
    "(%R~prefsync:signals:connectors:* +hget)",
    "(~prefsync:signals:inbox ~prefsync:signals:seen:* +fcall +set +rpush)",
    # Tokens issued per client and minute (worker.ingress.ratelimit).
    "(~prefsync:ingress:token-rate:* +set +incrby +ttl)",
    # The ingress's /metrics: the workers' counters and the dead letters' count and size.
    "(%R~prefsync:metrics:* +hgetall)",
    "(%R~prefsync:deadletters:order +zcard)",
    "(%R~prefsync:deadletters:bytes +hvals)",
)


# The exchanges Flower's own queues are bound to: the workers' events, their remote
# control and its replies.
_FLOWER_BINDINGS = " ".join(
    f"~_kombu.binding.{exchange} ~_kombu.binding_permanent.{exchange}"
    for exchange in ("celeryev", "celery.pidbox", "reply.celery.pidbox")
)


def _everyone(db: int) -> str:
    """The last rules of every user: its deployment's database only, no flush, no listing
    of keys, no script of its own. Redis clients send SELECT only for a database other
    than 0, so a deployment in 0 needs none."""
    select = "-select" if db == 0 else f"-select +select|{db}"
    return f"{select} -flushall -flushdb -keys -script -eval -evalsha -eval_ro -evalsha_ro"


def rules(db: int = 0) -> dict[str, str]:
    """Each component's ACL rules (before ``_everyone``'s), for a deployment in database
    ``db``."""
    # kombu's fanout channels carry the database's number. A pattern subscription
    # (kombu's, to remote control) must name an allowed pattern as it is.
    events = f"&/{db}.celeryev*"
    channels = f"&/{db}.* &/{db}.celery.pidbox"
    full = f"+@all -@dangerous -@scripting +fcall +fcall_ro +info {_ASIDE}"
    return {
        "worker": f"~* {channels} {full}",
        "admin": f"~* {channels} {full} +scan +function|load +function|list +function|delete",
        "producer": (
            f"{events} -@all +@connection -@dangerous +multi +exec +discard +time +publish "
            # FCALL_RO without keys: whether prefsync's functions are loaded.
            "+fcall_ro " + " ".join(_PRODUCER)
        ),
        "flower": (
            # The queues' lengths: LLEN alone, no command that returns a message.
            "%R~celery* "
            # Its inspection replies (and their priority variants: a two-byte separator
            # and a digit).
            "~*.reply.celery.pidbox ~*.reply.celery.pidbox??[369] "
            # kombu's tables of the exchanges whose queues Flower declares (its events'
            # and its replies'): never the bindings of a task queue.
            # Its events receiver subscribes by pattern, which must be allowed as it is.
            f"{_FLOWER_BINDINGS} ~_kombu.binding_deadlines &* "
            "-@all +@connection +@transaction +@pubsub +llen +brpop +del +pexpire +exists "
            "+sadd +srem +zadd +zrangebyscore +zrem +time +info"
        ),
    }


RULES = rules()
COMPONENTS = tuple(RULES)


def password_hash(password: str) -> str:
    return "#" + hashlib.sha256(password.encode()).hexdigest()


def render(passwords: Mapping[str, str], db: int = 0) -> str:
    """An ACL file (``aclfile``) with a user per component given a password, for a
    deployment in database ``db``."""
    unknown = set(passwords) - set(RULES)
    if unknown:
        raise ValueError(f"no such component: {', '.join(sorted(unknown))}")
    lines = ["user default off resetkeys resetchannels -@all"]
    for name, password in passwords.items():
        if not password:
            raise ValueError(f"the {name} password is empty")
        allowed = f"resetkeys resetchannels {rules(db)[name]} {_everyone(db)}"
        lines.append(f"user {name} on {password_hash(password)} {allowed}")
    return "\n".join(lines) + "\n"
