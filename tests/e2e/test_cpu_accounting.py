"""The benchmark's CPU accounting (bench/procs.py) counts a process tree's children, and
nothing for a process that is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from bench.procs import cpu_seconds, tree_cpu_seconds


def test_a_tree_counts_its_children_and_a_gone_process_counts_nothing() -> None:
    burner = (
        "import sys, time\n"
        "end = time.process_time() + 0.4\n"
        "while time.process_time() < end: pass\n"
        "sys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", burner], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while cpu_seconds(child.pid) < 0.35 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_seconds(os.getpid()) >= cpu_seconds(os.getpid()) + 0.35
    finally:
        child.communicate(b"")
    assert cpu_seconds(child.pid) == 0.0
