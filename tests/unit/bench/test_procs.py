"""The benchmark's CPU accounting (bench/procs.py) reads what a process really used."""

from __future__ import annotations

import os
import time

from bench.procs import cpu_seconds


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_seconds_grows_with_the_work_a_process_does() -> None:
    before = cpu_seconds(os.getpid())
    _burn(0.3)
    used = cpu_seconds(os.getpid()) - before
    assert 0.2 <= used <= 1.0
