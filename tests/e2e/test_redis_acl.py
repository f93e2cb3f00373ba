"""A Redis user per component (worker.infra.redis_acl) against a real redis-server started with the
ACL file `prefsync redis-acl` prints: each component does its job end to end, and no more.
"""

from __future__ import annotations

import json

import pytest
import redis
import requests

from tests.e2e.helpers import braze_attributes, braze_config, consent_event, jsonl, wait_until
from tests.e2e.test_ingress import add_credential, post, token

PASSWORDS = {
    "worker": "worker-pw-0123",
    "producer": "producer-pw-0123",
    "flower": "flower-pw-0123",
    "admin": "admin-pw-0123",
}
CONFIG_KEY = "prefsync:connectors:acme"


@pytest.fixture
def acl_redis(redis_server, prefsync_env, run_cli, tmp_path):
    """The test's Redis, restarted with the ACL file of `prefsync redis-acl`; plain again at
    the end (the teardown's scan of Redis has no password)."""
    env = {**prefsync_env, **{f"REDIS_{n.upper()}_PASSWORD": p for n, p in PASSWORDS.items()}}
    rendered = run_cli(env, "redis-acl")
    assert rendered.returncode == 0, rendered.stderr
    assert not any(password in rendered.stdout for password in PASSWORDS.values())
    acl = tmp_path / "users.acl"
    acl.write_text(rendered.stdout)
    redis_server.stop()
    redis_server.start(["--aclfile", str(acl)], auth=("admin", PASSWORDS["admin"]))
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

    wait_until(lambda: braze_attributes(fake_destinations.calls("braze")), timeout=15)
    audit = run_cli(admin, "audit", "acme")
    assert audit.returncode == 0 and "delivered" in audit.stdout
    assert "NOPERM" not in worker.log()

    # The HTTP ingress runs as the producer too: credentials, a webhook, /metrics.
    producer = env_of(prefsync_env, acl_redis, "producer")
    client_id, secret = add_credential(run_cli, producer)
    ingress = start_ingress(producer)
    bearer = f"Bearer {token(ingress.url, client_id, secret)}"
    second = consent_event("e2", "u-2", "2026-11-20T09:00:00Z", {"newsletter": True})
    assert post(ingress.url, second, bearer).status_code == 202
    wait_until(lambda: len(braze_attributes(fake_destinations.calls("braze"))) == 2, timeout=15)
    metrics = requests.get(f"{ingress.url}/metrics", timeout=10)
    assert metrics.status_code == 200 and "prefsync_redis_up 1" in metrics.text
    assert "NOPERM" not in ingress.log()


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
