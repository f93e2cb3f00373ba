"""`prefsync worker-health` reads the heartbeat the worker writes (worker.queue.liveness)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from worker.cli import main
from worker.infra.settings import get_settings
from worker.queue.liveness import heartbeat_age, write_heartbeat


@pytest.fixture
def heartbeat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "worker.heartbeat"
    monkeypatch.setenv("PREFSYNC_HEARTBEAT_FILE", str(path))
    monkeypatch.setenv("PREFSYNC_LIVENESS_TIMEOUT", "30")
    get_settings.cache_clear()
    yield path
    get_settings.cache_clear()


def health() -> tuple[int, str]:
    result = CliRunner().invoke(main, ["worker-health"])
    return result.exit_code, result.output


def test_a_fresh_heartbeat_is_healthy(heartbeat: Path):
    write_heartbeat(heartbeat, time.time() - 2)
    code, output = health()
    assert code == 0
    assert output.startswith("ok: heartbeat 2.")


def test_a_heartbeat_older_than_the_liveness_timeout_fails_naming_its_age(heartbeat: Path):
    write_heartbeat(heartbeat, time.time() - 45)
    code, output = health()
    assert code == 1
    assert "the worker stopped consuming: its last heartbeat is 45s old" in output
    assert "PREFSYNC_LIVENESS_TIMEOUT: 30s" in output


@pytest.mark.parametrize("content", [None, "", "not a time\n"])
def test_no_heartbeat_or_a_garbled_one_fails(heartbeat: Path, content: str | None):
    if content is not None:
        heartbeat.write_text(content)
    code, output = health()
    assert code == 1
    assert f"no heartbeat in {heartbeat}" in output
    assert "Traceback" not in output


def test_a_heartbeat_is_replaced_whole(tmp_path: Path):
    path = tmp_path / "beat"
    write_heartbeat(path, 100.0)
    write_heartbeat(path, 200.0)
    assert heartbeat_age(path, 205.0) == 5.0
    assert [p.name for p in tmp_path.iterdir()] == ["beat"]  # no partial file left behind
