"""What the benchmark adds to tests/processes.py: the fast fake in its own process, and what
it reads from /proc about the processes it started (CPU, memory).
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.processes import Process, tail


def start_fake(workdir: Path, brevo_limit: int, brevo_window: float) -> tuple[Process, str]:
    """bench/fake.py in its own process, so it does not share the runner's GIL; and its URL."""
    command = [
        sys.executable, "-m", "bench.fake", "--port", "0",
        "--brevo-limit", str(brevo_limit), "--brevo-window", str(brevo_window),
    ]  # fmt: skip
    process = Process("fake destination", command, workdir / "fake.log", stdout_pipe=True)
    assert process.proc.stdout is not None
    line = process.proc.stdout.readline().decode().strip()  # "listening on http://..."
    if not line.startswith("listening on "):
        process.stop()
        raise RuntimeError(f"the fake did not start: {line!r}\n{tail(process.log_path)}")
    return process, line.removeprefix("listening on ")


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
