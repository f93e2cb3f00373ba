"""The processes the benchmark starts -- redis-server, the fake, Celery workers -- and what
it reads from /proc about them.

Each is the leader of its own process group (``start_new_session``), so stopping one also
ends whatever it forked (a worker's pool children) and a Ctrl+C at the terminal reaches the
runner only, which then stops everything it started.
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
from dataclasses import dataclass
from pathlib import Path

import redis

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


class Process:
    """A subprocess in its own process group, its output in ``log``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                list(command),
                cwd=REPO_ROOT,
                env=dict(env) if env is not None else None,
                stdout=subprocess.PIPE if stdout_pipe else out,
                stderr=out,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def check_running(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (a Celery worker shuts down warm), then SIGKILL what is left of the group."""
        if self.running:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_redis(workdir: Path) -> tuple[Process, str]:
    """A throwaway redis-server on a free port (never 6379, which others share)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not on PATH (apt-get install redis-server)")
    port = free_port()
    # No persistence, as the e2e tests run it: the benchmark measures the worker, not the
    # disk (production's appendfsync everysec costs Redis little CPU besides).
    command = [
        binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(workdir),
    ]  # fmt: skip
    process = Process("redis-server", command, workdir / "redis.log")
    probe = redis.Redis(port=port, socket_connect_timeout=0.2, socket_timeout=1)

    def answers() -> bool:
        process.check_running()
        try:
            return bool(probe.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_until(answers, 10, "redis-server to answer PING")
    finally:
        probe.close()
    return process, f"redis://127.0.0.1:{port}"


def start_fake(workdir: Path, brevo_limit: int, brevo_window: float) -> tuple[Process, str]:
    """bench/fake.py in its own process, so it does not share the runner's GIL."""
    command = [
        sys.executable, "-m", "bench.fake", "--port", "0",
        "--brevo-limit", str(brevo_limit), "--brevo-window", str(brevo_window),
    ]  # fmt: skip
    process = Process("fake destination", command, workdir / "fake.log", stdout_pipe=True)
    assert process.proc.stdout is not None
    line = process.proc.stdout.readline().decode().strip()  # "listening on http://..."
    if not line.startswith("listening on "):
        process.stop()
        raise RuntimeError(f"the fake did not start: {line!r}\n{tail(process.log)}")
    return process, line.removeprefix("listening on ")


def start_worker(
    name: str, command: Sequence[str], env: Mapping[str, str], log: Path, timeout: float = 60
) -> Process:
    """A Celery worker; returns once it logged that it is ready."""
    process = Process(name, command, log, env={**env, "PYTHONUNBUFFERED": "1"})

    def ready() -> bool:
        process.check_running()
        return " ready." in log.read_text(errors="replace")

    try:
        wait_until(ready, timeout, f"{name} to be ready")
    except BaseException:
        process.stop()
        raise
    return process


# -- memory ------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a prefork worker's pool processes)."""
    found: list[int] = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def _status_kib(pid: int, field: str) -> int:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Memory:
    """A worker's memory after a run, MiB: main process plus its pool children."""

    peak_main: float  # VmHWM of the main process
    peak_children: tuple[float, ...]  # VmHWM of each pool child
    current: float  # VmRSS, summed over main and children

    @property
    def peak_total(self) -> float:
        """Sum of the peaks: an upper bound (the processes need not peak at once)."""
        return self.peak_main + sum(self.peak_children)


def cpu_seconds(pid: int) -> float:
    """User + system CPU ``pid`` has used so far (0 once it is gone)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        # The command name (field 2) may hold spaces: the fields after its ")" are fixed.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def tree_cpu_seconds(pid: int) -> float:
    """CPU used by ``pid`` and its direct children (a worker and its pool)."""
    return sum(cpu_seconds(p) for p in [pid, *children(pid)])


def memory(pid: int) -> Memory:
    pids = [pid, *children(pid)]
    return Memory(
        peak_main=_status_kib(pid, "VmHWM") / 1024,
        peak_children=tuple(_status_kib(p, "VmHWM") / 1024 for p in pids[1:]),
        current=sum(_status_kib(p, "VmRSS") for p in pids) / 1024,
    )
