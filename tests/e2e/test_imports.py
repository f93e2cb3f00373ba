"""Importing anything below the queue layer builds no Celery app and loads no Celery:
a fresh interpreter imports the module, then says which of Celery's packages it holds."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module",
    ["worker", "worker.core.events", "worker.infra.settings", "worker.connectors",
     "worker.records.state", "worker.delivery.runtime"],
)  # fmt: skip
def test_importing_below_the_queue_builds_no_celery(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        "loaded = sorted(m for m in ('celery', 'kombu', 'billiard') if m in sys.modules)\n"
        "print(','.join(loaded))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"importing {module} loads {done.stdout.strip()}"
