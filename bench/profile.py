"""Where a worker spends its time per event: py-spy samples of the worker and its pool
children during one extra run, boiled down to three top-N lists.

py-spy (``pip install py-spy``) is optional: only ``python -m bench.run --profile`` needs it.
It samples from outside the process (``--nonblocking``: without pausing it), so the
profiled run is slower only by the sampler's own CPU; that run is not one of the measured
ones.

The lists give each entry's share of the samples and its milliseconds per event. py-spy
leaves out a thread that sleeps (waits on a socket, a lock) but counts one that is runnable,
so on a busy 2-core machine "ms per event" is CPU time plus time spent waiting for a core:
it shows what the worker occupies, not pure CPU.

* self: the function on top of the stack (where the CPU is burnt);
* by caller: the innermost frame of prefsync (``worker/``), Celery, kombu or billiard on
  the stack, i.e. which step of ours or of the framework caused the time, what it called
  below (redis, requests, json, sockets) included; ``[main]`` marks the worker's main
  process (consuming, acking, dispatching to the pool), ``[pool]`` its children;
* by library: the package of the function on top (celery, kombu, redis, requests,
  pydantic, json, ...).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

RATE = 100  # samples per second per process: enough for a top 10, light on 2 cores
CALLERS = frozenset({"prefsync (worker/)", "celery", "kombu", "billiard"})
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def available() -> str | None:
    """The py-spy binary, or None."""
    return shutil.which("py-spy") or _beside_python()


def _beside_python() -> str | None:
    import sys

    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


class Recording:
    """``py-spy record`` of a process and its children until ``stop``."""

    def __init__(self, binary: str, pid: int, output: Path) -> None:
        self.output = output
        command = [
            binary, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
            "--format", "raw", "--rate", str(RATE), "--output", str(output),
        ]  # fmt: skip
        self.log = output.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        # py-spy writes its file on SIGINT.
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _library(file: str) -> str:
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/lib/python3" in file:  # the standard library, full path
        file = file.split("/lib/python3", 1)[1].split("/", 1)[-1]
    if file.startswith("worker/"):
        return "prefsync (worker/)"
    if file.startswith("<"):
        return file
    top = file.split("/", 1)[0].removesuffix(".py")
    return top


@dataclass
class Profile:
    events: int
    samples: int = 0
    main_samples: int = 0  # the worker's main process (consumer, pool bookkeeping)
    self_time: Counter[str] = field(default_factory=Counter)
    by_caller: Counter[str] = field(default_factory=Counter)
    by_library: Counter[str] = field(default_factory=Counter)

    def ms_per_event(self, samples: int) -> float:
        return samples / RATE * 1000 / self.events if self.events else 0.0


def summarize(path: Path, main_pid: int, events: int) -> Profile:
    """Read a py-spy raw (collapsed stacks) file."""
    profile = Profile(events)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        pid = None
        for raw in stack.split(";"):
            if raw.startswith("process "):
                pid = int(raw[8:].split(":", 1)[0])
                continue
            match = FRAME.match(raw)
            if match:
                frames.append((match["function"], match["file"]))
        if not frames:
            continue
        profile.samples += count
        if pid == main_pid:
            profile.main_samples += count
        function, file = frames[-1]
        profile.self_time[f"{function} ({file})"] += count
        profile.by_library[_library(file)] += count
        callers = [f"{fn} ({fl})" for fn, fl in frames if _library(fl) in CALLERS]
        role = "[main]" if pid == main_pid else "[pool]"
        profile.by_caller[f"{role} {callers[-1] if callers else frames[-1][0]}"] += count
    return profile


def top_markdown(profile: Profile, title: str, counter: Counter[str], n: int = 10) -> str:
    lines = [
        f"{title}:",
        "",
        "| # | where | share | ms/event |",
        "|---|---|---|---|",
    ]
    for number, (name, count) in enumerate(counter.most_common(n), start=1):
        share = count / profile.samples if profile.samples else 0
        lines.append(f"| {number} | `{name}` | {share:.1%} | {profile.ms_per_event(count):.3f} |")
    return "\n".join(lines)


def markdown(profile: Profile) -> str:
    total = profile.ms_per_event(profile.samples)
    main = profile.ms_per_event(profile.main_samples)
    head = (
        f"{profile.samples} samples at {RATE} Hz over {profile.events} events: "
        f"{total:.2f} ms per event running (or runnable) in the worker, of which "
        f"{main:.2f} in its main process (the consumer: fetching, acking, dispatching, "
        f"task events) and {total - main:.2f} in the pool children (the tasks)."
    )
    return "\n\n".join(
        [
            head,
            top_markdown(
                profile,
                "Top 10 by caller (innermost prefsync/Celery/kombu/billiard frame, inclusive)",
                profile.by_caller,
            ),
            top_markdown(profile, "Top 10 functions (self time)", profile.self_time),
            top_markdown(profile, "By library (self time)", profile.by_library),
        ]
    )
