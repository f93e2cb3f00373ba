"""Fixtures shared by the unit tests: mocked HTTP, and the process runtime on fakeredis."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import responses

from worker.core.events import Value
from worker.delivery import runtime as runtime_module
from worker.delivery.runtime import Runtime
from worker.infra.settings import Settings
from worker.records.person import load_record
from worker.records.state import Claim, StateStore, key


@pytest.fixture(autouse=True)
def dev_key_file(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test writes a development key into the home of whoever runs the tests."""
    monkeypatch.setenv("PREFSYNC_DEV_KEY_FILE", str(tmp_path / "secret.key"))
    # The unit tests store configs through the CLI without PREFSYNC_SECRET_KEYS.
    monkeypatch.setenv("PREFSYNC_ALLOW_DEV_KEY", "1")


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    """HTTP mocked by `responses`; a request to an unregistered URL fails the test."""
    with responses.RequestsMock() as rsps:
        yield rsps


def install_runtime(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Runtime:
    """Make a Runtime on fakeredis the one
    `worker.delivery.runtime.runtime()` returns (the CLI's)."""
    rt = Runtime(settings)
    rt.__dict__["redis"] = fakeredis.FakeRedis()
    monkeypatch.setattr(runtime_module, "_runtime", (os.getpid(), rt))
    return rt


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    return install_runtime(monkeypatch, Settings())


def hold_elsewhere(
    state: StateStore, tenant: str, connector_id: str, user: str
) -> Callable[[], None]:
    """Take the (connector, user) lock as another worker's delivery in flight would (its
    token: "another-worker"); returns what releases it."""
    claim = Claim(tenant, connector_id, "another-worker", busy={user}, writes={user: []})
    state._claim_busy(claim)
    assert claim.held == [user]

    def release() -> None:
        with state.redis.pipeline() as pipe:
            state.finish(claim, {}, {}, pipe)
            pipe.execute()

    return release


def known_values(state: StateStore, tenant: str, user: str) -> dict[str, Value]:
    """The newest known value of every property of a user, as `prefsync state show` reads
    it (StateStore.known)."""
    return {name: known.value for name, known in state.known(tenant, user).items()}


def lock_holder(state: StateStore, tenant: str, connector_id: str, user: str) -> str | None:
    """The token of whoever holds the (connector, user) lock, if anyone."""
    record = state.redis.get(key("person", tenant, state.person(user)))
    lock = load_record(record)["l"].get(connector_id)
    return lock[0] if lock else None
