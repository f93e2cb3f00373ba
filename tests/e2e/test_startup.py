"""Settings that cannot work stop the processes at start: `prefsync` and `celery -A worker
worker` exit 2 with one line naming the setting, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTRADICTION = {
    "PREFSYNC_HTTP_TIMEOUT": "5",
    "PREFSYNC_TASK_TIME_LIMIT": "6",
    "PREFSYNC_VISIBILITY_TIMEOUT": "400",
}


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "worker.cli", "stats"],
        [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo"],
    ],
    ids=["cli", "worker"],
)
def test_contradictory_settings_stop_the_cli_and_the_worker_with_one_line(command):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    done = subprocess.run(
        command,
        cwd=ROOT,
        env={**env, **CONTRADICTION},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: settings: PREFSYNC_HTTP_TIMEOUT (5s) does not fit")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
