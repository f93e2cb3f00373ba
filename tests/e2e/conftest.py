"""End-to-end fixtures: a real redis-server, real Celery worker processes, fake destinations.

Every test gets its own redis-server on a free port (it starts in a few milliseconds) and its
own in-process Braze/Brevo look-alike.  Workers are subprocesses in their own process group,
so a test can SIGKILL one with its pool children, as a crash would.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
import redis

from tests.e2e.helpers import free_port, tail, wait_until
from tests.fakes.destinations import FakeDestinations
from worker.records import scripts

REPO_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
WORKER_READY_TIMEOUT = 30.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e as ``e2e`` (deselect with ``-m "not e2e"``)."""
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


# -- Redis ------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server subprocess on 127.0.0.1:port, with data in ``directory``.

    ``start`` again after ``stop``/``kill`` reuses the same port and directory, so a test can
    restart Redis (for instance with ``["--appendonly", "yes"]``) and see what survived.
    """

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.log_path = directory / "redis.log"
        self.extra_args: tuple[str, ...] = ()
        self._proc: subprocess.Popen[bytes] | None = None
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(
        self,
        extra_args: Sequence[str] | None = None,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
    ) -> None:
        """Start (or restart) and wait for PING (as ``auth``'s user and password, when its
        ACL turns the default user off); ``extra_args=None`` reuses the last ones.

        Later arguments win over the defaults, e.g. ``["--appendonly", "yes"]``.
        """
        if self.running:
            raise RuntimeError(f"redis-server on port {self.port} is already running")
        if extra_args is not None:
            self.extra_args = tuple(extra_args)
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        username, password = auth or (None, None)
        probe = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.2,
            socket_timeout=1,
            username=username,
            password=password,
        )
        try:
            wait_until(
                lambda: self._answers_ping(probe),
                timeout=timeout,
                interval=0.01,
                message=lambda: f"redis-server did not answer PING:\n{tail(self.log_path)}",
            )
        finally:
            probe.close()

    def _answers_ping(self, probe: redis.Redis) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"redis-server exited with {self._proc.returncode}:\n{tail(self.log_path)}"
            )
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: an append-only file is flushed, no RDB is saved)."""
        if self.running:
            assert self._proc is not None
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """Die at once, as a crash would (SIGKILL)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def client(self, **kwargs) -> redis.Redis:
        """A new redis-py client for this server (closed at teardown)."""
        client = redis.Redis(port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.kill()


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


class WorkerProcess:
    """A ``celery worker`` subprocess, leader of its own process group."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.proc = proc
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = WORKER_READY_TIMEOUT) -> None:
        """Wait until ``text`` appears in the log; fail early if the worker dies."""

        def seen() -> bool:
            if text in self.log():
                return True
            if not self.running:
                raise RuntimeError(
                    f"worker {self.name} exited with {self.proc.returncode} before logging "
                    f"{text!r}:\n{tail(self.log_path)}"
                )
            return False

        wait_until(
            seen,
            timeout=timeout,
            interval=0.05,
            message=lambda: f"worker {self.name} never logged {text!r}:\n{tail(self.log_path)}",
        )

    def kill(self) -> None:
        """SIGKILL the worker and its pool children at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 20.0) -> int:
        """Warm shutdown (SIGTERM to the main process); kill what is left after ``timeout``."""
        if self.running:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()  # also reaps pool children a dying main process left behind
        return self.proc.returncode


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Factory: ``start_worker(env, concurrency=1, pool="prefork", extra_args=(), app="worker",
    extra_env=None, ready_timeout=30)`` starts a worker and returns once it logged "ready."."""
    workers: list[WorkerProcess] = []
    numbers = itertools.count()

    def start(
        env: Mapping[str, str],
        concurrency: int = 1,
        pool: str = "prefork",
        extra_args: Sequence[str] = (),
        app: str = "worker",
        extra_env: Mapping[str, str] | None = None,
        ready_timeout: float = WORKER_READY_TIMEOUT,
    ) -> WorkerProcess:
        name = f"w{next(numbers)}"
        command = [
            # --quiet as `prefsync worker` runs it with JSON logs: no plain-text banner.
            sys.executable, "-m", "celery", "-A", app, "--quiet", "worker",
            "--loglevel=INFO",
            f"--concurrency={concurrency}",
            f"--pool={pool}",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            "-n", f"{name}@%h",
            *extra_args,
        ]  # fmt: skip
        log_path = tmp_path / f"worker-{name}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env={**env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = WorkerProcess(name, proc, log_path)
        workers.append(worker)
        worker.wait_for_log(" ready.", timeout=ready_timeout)
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
        done = subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=REPO_ROOT,
            env=dict(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = f"{done.stdout}\n{done.stderr}".encode()
        assert_no_secret(f"the output of `prefsync {' '.join(args)}`", output)
        return done

    return run


# -- The HTTP ingress (prefsync serve) -----------------------------------------------------------


class IngressProcess:
    """A ``prefsync serve`` subprocess on 127.0.0.1:port, leader of its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


StartIngress = Callable[..., IngressProcess]


@pytest.fixture
def start_ingress(tmp_path: Path) -> Iterator[StartIngress]:
    """Factory: ``start_ingress(env, extra_env=None)`` starts ``prefsync serve`` on a free
    port and returns once ``/healthz`` answers 200."""
    import requests

    started: list[IngressProcess] = []

    def start(env: Mapping[str, str], extra_env: Mapping[str, str] | None = None) -> IngressProcess:
        port = free_port()
        log_path = tmp_path / f"ingress-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
                cwd=REPO_ROOT,
                env={**env, **(extra_env or {}), "PYTHONUNBUFFERED": "1"},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ingress = IngressProcess(proc, port, log_path)
        started.append(ingress)

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"prefsync serve exited:\n{tail(log_path)}")
            try:
                return requests.get(f"{ingress.url}/healthz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(healthy, timeout=30, message=lambda: f"no /healthz:\n{tail(log_path)}")
        return ingress

    yield start
    for ingress in started:
        ingress.stop()
    for ingress in started:
        assert_no_secret("the log of prefsync serve", ingress.log_path.read_bytes())
