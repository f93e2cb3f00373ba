"""End-to-end fixtures: a real redis-server, real Celery worker processes, fake destinations.

Every test gets its own redis-server on a free port (it starts in a few milliseconds) and its
own in-process Braze/Brevo look-alike.  Workers are subprocesses in their own process group,
so a test can SIGKILL one with its pool children, as a crash would.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis

from tests.fakes.destinations import FakeDestinations
from tests.processes import REPO_ROOT as REPO_ROOT  # the tests' import of it
from tests.processes import Ingress, Process, RedisServer, free_port, worker_command
from tests.processes import run_cli as run_prefsync
from tests.processes import start_ingress as start_ingress_process
from tests.processes import start_worker as start_worker_process
from worker.records import scripts

E2E_DIR = Path(__file__).resolve().parent
WORKER_READY_TIMEOUT = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e`` (deselect with ``-m "not e2e"``)."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH: the e2e tests need a real Redis "
            "(Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)",
            pytrace=False,
        )
    return binary


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(redis_binary, free_port(), directory)
    server.start()
    # As a deployment does (docs/security.md): the workers then run prefsync's scripts as
    # functions (FCALL). Not kept over a restart without persistence: then EVALSHA.
    scripts.load(server.client())
    yield server
    try:
        if server.running:
            assert_no_secret("Redis (task arguments, dead letters, audit, outbox)", dump(server))
    finally:
        server.close()


# -- Secrets -----------------------------------------------------------------------------------

# Every API key the end-to-end tests use has this shape (tests.e2e.helpers); what a test
# captured — worker logs, CLI output, everything in Redis, the stored configs included
# (sealed: worker.infra.sealing) — is scanned for it after the test.
SECRET = re.compile(rb"test-key-[0-9]{4}")
# The key the configs of the end-to-end tests are sealed with (PREFSYNC_SECRET_KEYS).
SEALING_KEY = "MDZA89by3YRpiwUP6154HXJBVs4bZmSt0gmLEYjQXNE="


def assert_no_secret(where: str, data: bytes) -> None:
    found = SECRET.search(data)
    if found is not None:
        context = data[max(0, found.start() - 120) : found.end() + 40]
        pytest.fail(f"an API key leaked into {where}: ...{context!r}...", pytrace=False)


def dump(server: RedisServer) -> bytes:
    """Every key and value in Redis, as one blob."""
    client = redis.Redis(port=server.port)
    readers = {
        b"string": client.get,
        b"hash": client.hgetall,
        b"list": lambda k: client.lrange(k, 0, -1),
        b"set": client.smembers,
        b"zset": lambda k: client.zrange(k, 0, -1),
        b"stream": lambda k: client.xrange(k),
    }
    parts: list[bytes] = []
    try:
        for db in range(16):
            client.execute_command("SELECT", db)
            for name in client.scan_iter(count=1000):
                value = readers.get(client.type(name), lambda _: b"")(name)
                parts += [name, repr(value).encode()]
    finally:
        client.close()
    return b"\n".join(parts)


# -- Fake destinations and the environment of prefsync processes ---------------------------------


@pytest.fixture
def fake_destinations() -> Iterator[FakeDestinations]:
    with FakeDestinations() as fake:
        yield fake


@pytest.fixture
def prefsync_env(
    redis_server: RedisServer, fake_destinations: FakeDestinations, tmp_path: Path
) -> dict[str, str]:
    """Environment for worker and CLI subprocesses: short timeouts, local Redis and fakes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    env.update(
        PREFSYNC_REDIS_URL=redis_server.url,
        PREFSYNC_ALLOW_HOSTS=fake_destinations.host_port,
        PREFSYNC_SENDINBLUE_API_URL=f"{fake_destinations.url}/v3",
        PREFSYNC_RETRY_COUNTDOWNS="0.1,0.3,0.6,0.9,1.1",
        PREFSYNC_VISIBILITY_TIMEOUT="13",
        PREFSYNC_HTTP_TIMEOUT="2",
        # A soft limit (3 s) that fits one HTTP call and a wait for Redis (Settings checks).
        PREFSYNC_TASK_TIME_LIMIT="8",
        PREFSYNC_LOG_FORMAT="json",
        PREFSYNC_RATE_LIMIT_MAX_WAIT="2",  # visibility timeout must outlast the longest wait
        PREFSYNC_SECRET_KEYS=SEALING_KEY,
        # The test's own: workers of other tests (and other test runs) write theirs.
        PREFSYNC_HEARTBEAT_FILE=str(tmp_path / "worker.heartbeat"),
    )
    return env


# -- Celery worker processes -------------------------------------------------------------------


StartWorker = Callable[..., Process]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(env, concurrency=1, pool="prefork", extra_args=(), app="worker",
    extra_env=None, ready_timeout=30)`` starts a worker and returns once it logged "ready."."""
    workers: list[Process] = []
    numbers = itertools.count()

    def start(
        env: Mapping[str, str],
        concurrency: int = 1,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
        app: str = "worker",
        extra_env: Mapping[str, str] | None = None,
        ready_timeout: float = WORKER_READY_TIMEOUT,
    ) -> Process:
        name = f"w{next(numbers)}"
        command = worker_command(app, concurrency, name, pool, extra_args)
        log_path = tmp_path / f"worker-{name}.log"
        worker = start_worker_process(
            name, command, {**env, **(extra_env or {})}, log_path, ready_timeout
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
    for worker in workers:
        assert_no_secret(f"the log of worker {worker.name}", worker.log_path.read_bytes())


# -- The prefsync command ------------------------------------------------------------------------


RunCli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def run_cli() -> RunCli:
    """``run_cli(env, *args, input=None)``: run ``python -m worker.cli`` and capture its output."""

    def run(
        env: Mapping[str, str], *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        done = run_prefsync(env, *args, input=input, timeout=timeout)
        output = f"{done.stdout}\n{done.stderr}".encode()
        assert_no_secret(f"the output of `prefsync {' '.join(args)}`", output)
        return done

    return run


# -- The HTTP ingress (prefsync serve) -----------------------------------------------------------


StartIngress = Callable[..., Ingress]


@pytest.fixture
def start_ingress(tmp_path: Path) -> Iterator[StartIngress]:
    """Factory: ``start_ingress(env, extra_env=None)`` starts ``prefsync serve`` on a free
    port and returns once ``/healthz`` answers 200."""
    started: list[Ingress] = []

    def start(env: Mapping[str, str], extra_env: Mapping[str, str] | None = None) -> Ingress:
        log_path = tmp_path / f"ingress-{len(started)}.log"
        ingress = start_ingress_process({**env, **(extra_env or {})}, log_path)
        started.append(ingress)
        return ingress

    yield start
    for ingress in started:
        ingress.stop()
    for ingress in started:
        assert_no_secret("the log of prefsync serve", ingress.log_path.read_bytes())
