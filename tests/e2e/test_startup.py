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


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("PREFSYNC_RETRY_JITTER", "5", "PREFSYNC_RETRY_JITTER: Input should be less than 1"),
        ("PREFSYNC_RATE_LIMITS", "{bad", "PREFSYNC_RATE_LIMITS: not valid JSON"),
        ("PREFSYNC_VISIBILITY_TIMEOUT", "10", "PREFSYNC_VISIBILITY_TIMEOUT (10s) must exceed"),
        ("PREFSYNC_INGRESS_ALLOW_FROM", "nope", "'nope' is not an IP address or CIDR block"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    variable: str, value: str, said: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFSYNC_")}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "stats"],
        env={**env, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and said in done.stderr


def test_a_worker_with_an_unknown_rate_limit_name_does_not_start() -> None:
    env = {**os.environ, "PREFSYNC_RATE_LIMITS": '{"mailchimp": 5}'}
    started = subprocess.run(
        [sys.executable, "-c", "from worker import app"], env=env, capture_output=True, text=True
    )
    assert started.returncode == 2
    assert started.stderr.strip().startswith("error: PREFSYNC_RATE_LIMITS: names 'mailchimp'")
    assert "Traceback" not in started.stderr
