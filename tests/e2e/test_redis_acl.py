"""A Redis user per component (worker.infra.redis_acl) against a real redis-server started with the
ACL file `prefsync redis-acl` prints and prefsync's functions loaded by the admin: each
component does its job end to end without one refusal, may run every command its job
needs, and is refused the harmful ones (ACL DRYRUN and real calls), so the attacks a
stolen credential would try fail and leave the data as it was.
"""

from __future__ import annotations

import json

import pytest
import redis
import requests

from tests.e2e.helpers import braze_attributes, braze_config, consent_event, jsonl, wait_until
from tests.e2e.test_ingress import add_credential, post, token
from worker.records import scripts

PASSWORDS = {
    "worker": "worker-pw-0123",
    "producer": "producer-pw-0123",
    "flower": "flower-pw-0123",
    "admin": "admin-pw-0123",
}
CONFIG_KEY = "prefsync:connectors:acme"
# A user of the tests' own, beside those of the file: it reads ACL LOG and runs ACL DRYRUN,
# which no prefsync user may.
INSPECTOR = ("inspector", "inspector-pw-0123")


@pytest.fixture
def acl_redis(redis_server, prefsync_env, run_cli, tmp_path):
    """The test's Redis, restarted with the ACL file of `prefsync redis-acl`; plain again at
    the end (the teardown's scan of Redis has no password)."""
    env = {**prefsync_env, **{f"REDIS_{n.upper()}_PASSWORD": p for n, p in PASSWORDS.items()}}
    rendered = run_cli(env, "redis-acl")
    assert rendered.returncode == 0, rendered.stderr
    assert not any(password in rendered.stdout for password in PASSWORDS.values())
    acl = tmp_path / "users.acl"
    acl.write_text(rendered.stdout + f"user {INSPECTOR[0]} on >{INSPECTOR[1]} ~* &* +@all\n")
    redis_server.stop()
    redis_server.start(["--aclfile", str(acl)], auth=("admin", PASSWORDS["admin"]))
    loaded = run_cli(env_of(prefsync_env, redis_server, "admin"), "redis-acl", "--load-functions")
    assert loaded.returncode == 0, loaded.stderr
    assert f"loaded {scripts.LIBRARY}" in loaded.stdout
    yield redis_server
    redis_server.stop()
    redis_server.start([])


def env_of(prefsync_env, server, user: str) -> dict[str, str]:
    return {
        **prefsync_env,
        "PREFSYNC_REDIS_URL": f"redis://{user}:{PASSWORDS[user]}@127.0.0.1:{server.port}/0",
    }


def client_of(server, user: str) -> redis.Redis:
    return server.client(username=user, password=PASSWORDS[user])


def inspector(server) -> redis.Redis:
    return server.client(username=INSPECTOR[0], password=INSPECTOR[1])


def refusals(server) -> list[str]:
    """What Redis refused any user since it started (ACL LOG): user, command, key."""
    return [
        f"{entry['username']}: {entry['reason']} {entry['object']}"
        for entry in inspector(server).acl_log()
        if entry["username"] != INSPECTOR[0]
    ]


def test_each_component_does_its_job_with_its_own_user(
    acl_redis, prefsync_env, fake_destinations, start_worker, start_ingress, run_cli
):
    admin = env_of(prefsync_env, acl_redis, "admin")
    put = run_cli(
        admin,
        "connectors",
        "put",
        "acme",
        "-",
        input=json.dumps(braze_config(fake_destinations.url)),
    )
    assert put.returncode == 0, put.stderr

    worker = start_worker(env_of(prefsync_env, acl_redis, "worker"), concurrency=2)
    event = consent_event("e1", "u-1", "2026-11-20T09:00:00Z", {"newsletter": True})
    enqueued = run_cli(
        env_of(prefsync_env, acl_redis, "producer"), "enqueue", "-", input=jsonl([event])
    )
    assert enqueued.returncode == 0, enqueued.stderr

    wait_until(
        lambda: braze_attributes(fake_destinations.calls("braze")),
        timeout=15,
        message=lambda: f"refused: {refusals(acl_redis)}\n{worker.log()[-3000:]}",
    )
    audit = run_cli(admin, "audit", "acme")
    assert audit.returncode == 0 and "delivered" in audit.stdout
    assert "NOPERM" not in worker.log()

    # The HTTP ingress runs as the producer too: a token, a webhook, /metrics. The
    # credential is the admin's to make: the producer may only read it.
    producer = env_of(prefsync_env, acl_redis, "producer")
    client_id, secret = add_credential(run_cli, admin)
    ingress = start_ingress(producer)
    bearer = f"Bearer {token(ingress.url, client_id, secret)}"
    second = consent_event("e2", "u-2", "2026-11-20T09:00:00Z", {"newsletter": True})
    assert post(ingress.url, second, bearer).status_code == 202
    wait_until(lambda: len(braze_attributes(fake_destinations.calls("braze"))) == 2, timeout=15)
    metrics = requests.get(f"{ingress.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "prefsync_redis_up 1" in metrics.text
    assert "NOPERM" not in ingress.log()
    assert refusals(acl_redis) == []  # no component was refused anything its job needs


def test_the_producer_cannot_read_configs_or_anything_about_people(acl_redis):
    producer = client_of(acl_redis, "producer")
    assert producer.time()
    assert producer.lpush("celery", "x") == 1  # it may enqueue
    assert producer.hgetall("prefsync:metrics:outcomes") == {}  # the ingress's /metrics
    assert producer.zcard("prefsync:deadletters:order") == 0
    for read in (
        lambda: producer.hgetall(CONFIG_KEY),
        lambda: producer.hgetall('prefsync:state:["acme","u-1"]'),
        lambda: producer.xrange('prefsync:audit:["acme"]'),
        lambda: producer.hgetall("prefsync:deadletters"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            read()


def test_flower_reads_the_queues_and_events_but_not_prefsync_and_cannot_send_tasks(acl_redis):
    admin = client_of(acl_redis, "admin")
    admin.hset(CONFIG_KEY, "braze", "sealed")
    admin.lpush("celery", "a message")
    flower = client_of(acl_redis, "flower")

    assert flower.llen("celery") == 1
    pubsub = flower.pubsub()
    pubsub.psubscribe("/0.celeryev*")  # the workers' task events
    pubsub.close()
    for forbidden in (
        lambda: flower.hgetall(CONFIG_KEY),
        lambda: flower.hget(CONFIG_KEY, "braze"),
        lambda: flower.hgetall("prefsync:stats"),
        lambda: flower.lpush("celery", "a task of Flower's"),  # no task sent through Flower
        lambda: flower.delete("celery"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()


def test_a_client_without_a_user_is_refused(acl_redis):
    anonymous = acl_redis.client()
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()


FN = scripts.function_name
PERSON = 'prefsync:person:["acme","p"]'

# What each user's job needs, as Redis commands (ACL DRYRUN: allowed).
NEEDED = {
    "producer": [
        ["LPUSH", "celery", "m"],  # kombu's publish, into each lane's queues
        ["LPUSH", "celery.bulk.braze", "m"],
        ["SMEMBERS", "_kombu.binding.celery"],  # kombu's routing
        ["SADD", "_kombu.binding.celery", "celery\x06\x16\x06\x16celery"],
        ["PUBLISH", "/0.celeryev/task.sent", "{}"],  # the task-sent event (Flower)
        ["MULTI"],
        ["EXEC"],
        ["HSETNX", "prefsync:outbox", "task-1", "{}"],  # the outbox: added, never changed
        ["ZADD", "prefsync:outbox:due", "1", "task-1"],
        ["RPUSH", "prefsync:bulk:acme", "m"],  # a parked bulk load
        ["ZADD", "prefsync:bulk:tenants", "NX", "0", "acme"],
        ["HGET", "prefsync:ingress:clients", "psc_1"],  # a credential checked
        ["GET", "prefsync:ingress:token:ab"],  # a token in the stored-token format
        ["SET", "prefsync:ingress:token-rate:psc_1", "0", "EX", "60", "NX"],  # tokens a minute
        ["INCRBY", "prefsync:ingress:token-rate:psc_1", "1"],
        ["TTL", "prefsync:ingress:token-rate:psc_1"],
        ["HGET", "prefsync:signals:connectors:acme", "sendinblue"],  # a tool's signal
        [
            "FCALL",
            FN("signals_inbox"),
            "2",
            "prefsync:signals:inbox",
            "prefsync:signals:seen:x",
            "604800",
            "{}",
        ],
        ["FCALL_RO", FN("loaded"), "0"],
        ["TIME"],
        ["PING"],
        # /metrics
        ["LLEN", "celery"],
        ["HGETALL", "prefsync:metrics:outcomes"],
        ["ZCARD", "prefsync:outbox:due"],
        ["ZCOUNT", "prefsync:outbox:due", "1", "+inf"],
        ["ZRANGE", "prefsync:outbox:due", "0", "0", "WITHSCORES"],
        ["ZCARD", "prefsync:deadletters:order"],
        ["HVALS", "prefsync:deadletters:bytes"],
    ],
    "worker": [
        ["FCALL", FN("claim"), "1", PERSON, "t"],  # prefsync's scripts: its functions
        ["FCALL", FN("audit_append"), "2", 'prefsync:audit:["acme"]', "h", "1"],
        ["FCALL_RO", FN("loaded"), "0"],
        ["BRPOP", "celery", "celery.bulk", "1"],  # kombu: consume, park unacked, ack
        ["HSET", "unacked", "tag", "m"],
        ["ZADD", "unacked_index", "1", "tag"],
        ["HDEL", "unacked", "tag"],
        ["SET", "unacked_mutex", "x", "NX", "EX", "300"],
        ["DEL", "unacked_mutex"],
        ["SUBSCRIBE", "/0.celery.pidbox"],  # remote control (ping, inspect)
        ["PUBLISH", "/0.celeryev/worker.heartbeat", "{}"],
        ["HSET", "prefsync:outbox", "task-1", "{}"],  # the outbox, dead letters, metrics
        ["HDEL", "prefsync:outbox", "task-1"],
        ["XADD", "prefsync:deadletters:stream", "*", "k", "v"],
        ["HINCRBY", "prefsync:metrics:outcomes", "f", "1"],
        ["GET", PERSON],
        ["INFO"],
        ["TIME"],
    ],
    "admin": [
        ["SCAN", "0"],  # prefsync connectors reencrypt
        ["FUNCTION", "LOAD", "#!lua name=x"],
        ["FUNCTION", "LIST"],
        ["FCALL", FN("forget"), "1", PERSON, "all"],
        ["HSET", "prefsync:ingress:clients", "psc_1", "{}"],
        ["HDEL", "prefsync:ingress:clients", "psc_1"],
        ["HSET", CONFIG_KEY, "braze", "sealed"],
        ["XREVRANGE", 'prefsync:audit:["acme"]', "+", "-"],
    ],
}

# What a stolen credential would try (ACL DRYRUN and real calls: refused).
EVERYONE = [
    ["SELECT", "1"],
    ["FLUSHALL"],
    ["FLUSHDB"],
    ["KEYS", "*"],
    ["SCRIPT", "FLUSH"],
    ["EVAL", "return 1", "0"],
    ["CONFIG", "SET", "appendonly", "no"],
]
HARMFUL = {
    "producer": [
        ["DEL", "celery"],
        ["DEL", "unacked"],
        ["DEL", "prefsync:outbox"],
        ["DEL", "_kombu.binding.celery"],
        ["SREM", "_kombu.binding.celery", "celery\x06\x16\x06\x16celery"],
        ["HSET", "prefsync:ingress:clients", "psc_mine", '{"tenant": "acme"}'],  # mint
        ["HDEL", "prefsync:ingress:clients", "psc_1"],  # remove a tenant's client
        ["SET", "prefsync:ingress:token:ab", "psc_1"],
        ["LRANGE", "celery", "0", "-1"],  # read a tenant's queued events
        ["RPOP", "celery"],
        ["HGETALL", "prefsync:outbox"],
        ["HSET", "prefsync:outbox", "task-1", "{}"],  # change an unfinished task
        ["HGETALL", CONFIG_KEY],
        ["GET", PERSON],
        ["FCALL", FN("forget"), "1", PERSON, "all"],
        ["SCAN", "0"],
        *EVERYONE,
    ],
    "worker": [
        ["EVALSHA", "0" * 40, "0"],
        ["SCRIPT", "LOAD", "return 1"],
        ["FUNCTION", "LOAD", "#!lua name=x"],
        ["FUNCTION", "DELETE", scripts.LIBRARY],
        ["FUNCTION", "FLUSH"],
        ["SCAN", "0"],
        ["RANDOMKEY"],
        ["MOVE", PERSON, "1"],
        ["COPY", PERSON, PERSON, "DB", "1"],
        ["SWAPDB", "0", "1"],
        ["CLIENT", "KILL", "ID", "1"],
        ["ACL", "LIST"],
        *EVERYONE,
    ],
    "admin": [["FUNCTION", "FLUSH"], *EVERYONE],
    "flower": [["FCALL", FN("loaded"), "0"], *EVERYONE],
}


@pytest.mark.parametrize("user", list(NEEDED))
def test_each_user_may_run_every_command_its_job_needs(acl_redis, user):
    check = inspector(acl_redis)
    refused = {
        " ".join(command): answer
        for command in NEEDED[user]
        if (answer := check.acl_dryrun(user, *command)) != b"OK"
    }
    assert refused == {}


@pytest.mark.parametrize("user", list(HARMFUL))
def test_each_user_is_refused_the_harmful_commands(acl_redis, user):
    check = inspector(acl_redis)
    allowed = [
        " ".join(command) for command in HARMFUL[user] if check.acl_dryrun(user, *command) == b"OK"
    ]
    assert allowed == []
    client = client_of(acl_redis, user)
    for command in HARMFUL[user]:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)


def test_the_attacks_of_a_stolen_producer_or_worker_credential_fail(
    acl_redis, prefsync_env, run_cli
):
    admin_env = env_of(prefsync_env, acl_redis, "admin")
    client_id, _secret = add_credential(run_cli, admin_env)
    admin = client_of(acl_redis, "admin")
    admin.lpush("celery", "a queued event of acme")
    admin.hset("unacked", "tag", "a running task")
    admin.hset("prefsync:outbox", "task-1", "an unfinished task")
    admin.sadd("_kombu.binding.celery", "celery\x06\x16\x06\x16celery")
    admin.set(PERSON, "a person's record")
    look = inspector(acl_redis)
    before = {
        name: look.dump(name)
        for name in ("celery", "unacked", "prefsync:outbox", "_kombu.binding.celery", PERSON)
    }
    before["prefsync:ingress:clients"] = look.dump("prefsync:ingress:clients")

    producer = client_of(acl_redis, "producer")
    attempts = [
        lambda: producer.delete("celery", "unacked", "prefsync:outbox"),
        lambda: producer.delete("_kombu.binding.celery"),
        lambda: producer.hset("prefsync:ingress:clients", "psc_mine", '{"tenant":"acme"}'),
        lambda: producer.hdel("prefsync:ingress:clients", client_id),
        lambda: producer.script_flush(),
        lambda: producer.lrange("celery", 0, -1),
    ]
    worker = client_of(acl_redis, "worker")
    empty_all = "for _, k in ipairs(redis.call('SCAN', 0)[2]) do redis.call('DEL', k) end"
    attempts += [
        lambda: worker.eval(empty_all, 0),
        lambda: worker.script_load(empty_all),
        lambda: worker.function_load(f"#!lua name=mine\n{empty_all}"),
        lambda: worker.scan(0),
    ]
    for user in ("producer", "worker", "flower", "admin"):
        attempts.append(lambda user=user: client_of(acl_redis, user).execute_command("SELECT", 1))
    for attempt in attempts:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()

    assert {name: look.dump(name) for name in before} == before
