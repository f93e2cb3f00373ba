"""The processes the end-to-end tests, the demo and the benchmark start: a throwaway
redis-server, Celery workers, the HTTP ingress (``prefsync serve``) and the ``prefsync``
command; how each is started, known to be ready, and stopped.

Each process is the leader of its own process group (``start_new_session``): stopping one
also ends whatever it forked (a worker's pool children), a test can SIGKILL one as a crash
would, and a Ctrl+C at the terminal reaches only the runner, which then stops what it
started. A process that never gets ready is stopped before the error is raised.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import redis
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = " ready."  # what a Celery worker logs once it consumes

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for a failure message."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises ``AssertionError`` with ``message`` (a string, or a callable evaluated at the
    deadline so it can show the state that was reached) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:g} s: {text}")
        time.sleep(interval)


class Process:
    """A subprocess run from the repository root in its own process group, its output
    appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=dict(env) if env is not None else None,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out if stdout_pipe else subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check_running(self) -> None:
        if not self.running:
            raise RuntimeError(
                f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Wait until ``text`` appears in the log; fail early if the process exits."""

        def seen() -> bool:
            if text in self.log():
                return True
            self.check_running()
            return False

        wait_until(
            seen,
            timeout=timeout,
            message=lambda: f"{self.name} never logged {text!r}:\n{tail(self.log_path)}",
        )

    def kill(self) -> None:
        """SIGKILL the process and whatever it forked at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (a Celery worker shuts down warm, Redis flushes its append-only file),
        then SIGKILL what is left of the group after ``timeout``; the exit status."""
        if self.running:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()  # also reaps children a dying main process left behind
        return self.proc.returncode


# -- Redis -----------------------------------------------------------------------------------


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    return binary


class RedisServer:
    """A redis-server on 127.0.0.1:port without persistence, data in ``directory``.

    ``start`` again after ``stop``/``kill`` reuses the same port and directory, so a test can
    restart Redis (for instance with ``["--appendonly", "yes"]``) and see what survived.
    """

    def __init__(self, binary: str, port: int, directory: Path) -> None:
        self.binary = binary
        self.port = port
        self.directory = directory
        self.log_path = directory / "redis.log"
        self.extra_args: tuple[str, ...] = ()
        self._process: Process | None = None
        self._clients: list[redis.Redis] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("redis-server was never started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def start(
        self,
        extra_args: Sequence[str] | None = None,
        timeout: float = 10.0,
        auth: tuple[str, str] | None = None,
    ) -> RedisServer:
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
        process = self._process = Process("redis-server", command, self.log_path)
        username, password = auth or (None, None)
        probe = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.2,
            socket_timeout=1,
            username=username,
            password=password,
        )

        def answers() -> bool:
            process.check_running()
            try:
                return bool(probe.ping())
            except redis.ConnectionError:
                return False

        try:
            wait_until(
                answers,
                timeout=timeout,
                interval=0.01,
                message=lambda: f"redis-server did not answer PING:\n{tail(self.log_path)}",
            )
        except BaseException:
            process.kill()
            raise
        finally:
            probe.close()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: an append-only file is flushed, no RDB is saved)."""
        if self._process is not None:
            self._process.stop(timeout)

    def kill(self) -> None:
        """Die at once, as a crash would (SIGKILL)."""
        if self._process is not None:
            self._process.kill()

    def client(self, **kwargs) -> redis.Redis:
        """A new redis-py client for this server (closed by :meth:`close`)."""
        client = redis.Redis(port=self.port, **kwargs)
        self._clients.append(client)
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.kill()


def start_redis(directory: Path) -> RedisServer:
    """A throwaway redis-server on a free port (never 6379, which others share)."""
    return RedisServer(redis_binary(), free_port(), directory).start()


# -- prefsync's processes --------------------------------------------------------------------


def worker_command(
    app: str = "worker",
    concurrency: int = 1,
    name: str | None = None,
    pool: str = "prefork",
    extra_args: Sequence[str] = (),
) -> list[str]:
    """A Celery worker of ``app`` that logs JSON and talks to no other worker."""
    return [
        # --quiet as `prefsync worker` runs it with JSON logs: no plain-text banner.
        sys.executable, "-m", "celery", "-A", app, "--quiet", "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--pool={pool}",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
        *(["-n", f"{name}@%h"] if name else []),
        *extra_args,
    ]  # fmt: skip


def start_worker(
    name: str, command: Sequence[str], env: Mapping[str, str], log_path: Path, timeout: float = 60
) -> Process:
    """A Celery worker; returns once it logged that it is ready."""
    process = Process(name, command, log_path, env={**env, "PYTHONUNBUFFERED": "1"})
    try:
        process.wait_for_log(READY, timeout)
    except BaseException:
        process.stop()
        raise
    return process


class Ingress(Process):
    """``prefsync serve`` on 127.0.0.1:port."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path, port: int, extra_args: Sequence[str] = ()
    ) -> None:
        command = [sys.executable, "-m", "worker.cli", "serve", "--port", str(port), *extra_args]
        super().__init__("prefsync serve", command, log_path, {**env, "PYTHONUNBUFFERED": "1"})
        self.port = port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        self.check_running()
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False


def start_ingress(
    env: Mapping[str, str], log_path: Path, extra_args: Sequence[str] = (), timeout: float = 30
) -> Ingress:
    """``prefsync serve`` on a free port; returns once ``/healthz`` answers 200."""
    ingress = Ingress(env, log_path, free_port(), extra_args)
    try:
        wait_until(
            ingress.healthy,
            timeout=timeout,
            message=lambda: f"no /healthz from prefsync serve:\n{tail(log_path)}",
        )
    except BaseException:
        ingress.stop()
        raise
    return ingress


def run_cli(
    env: Mapping[str, str], *args: str, input: str | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m worker.cli ARGS`` (what ``prefsync ARGS`` runs), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        cwd=REPO_ROOT,
        env=dict(env),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
