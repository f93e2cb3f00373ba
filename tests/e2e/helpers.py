"""Small helpers for end-to-end tests."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for a failure message."""
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition not met",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises ``AssertionError`` with ``message`` (a string, or a callable evaluated at the
    deadline so it can show the state that was reached) after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:g} s: {text}")
        time.sleep(interval)


# -- Configs and events ----------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BRAZE_KEY = "braze-acme-test-key-0001"
BREVO_KEY = "xkeysib-acme-test-key-0002"


def example(kind: str, name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / kind / name).read_text())


def braze_config(server: str, key: str = BRAZE_KEY) -> dict[str, Any]:
    """The example Braze config, pointed at ``server``: OPTED_IN <- newsletter,
    UNSUBSCRIBED <- email_optout, a subscription group <- product_updates."""
    config = example("connectors", "braze.json")
    config["authentication"] = {"api_key": key, "server": server}
    return config


def brevo_config(key: str = BREVO_KEY) -> dict[str, Any]:
    config = example("connectors", "sendinblue.json")
    config["config"]["api_key"] = key
    return config


def consent_event(
    event_id: str,
    user: str,
    updated_at: str,
    purposes: dict[str, bool],
    tenant: str = "acme",
) -> dict[str, Any]:
    """An ``event.created`` payload naming ``purposes`` (id -> enabled) for ``user``."""
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": event_id,
                "organization_id": tenant,
                "created_at": updated_at,
                "updated_at": updated_at,
                "status": "confirmed",
                "user": {"id": f"pmp-{user}", "organization_user_id": user},
                "consents": {"purposes": [{"id": p, "enabled": on} for p, on in purposes.items()]},
            }
        },
    }


def jsonl(events: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(event) + "\n" for event in events)


def braze_attributes(calls: list[Any], status: int = 201) -> list[dict[str, Any]]:
    """Every attributes object Braze accepted, in the order it received them."""
    return [obj for call in calls if call.status == status for obj in call.body["attributes"]]


def last_braze_value(fake: Any, field: str = "email_subscribe") -> dict[str, Any]:
    """external_id -> the last value of ``field`` Braze accepted for that user."""
    last: dict[str, Any] = {}
    for obj in braze_attributes(fake.calls("braze")):
        if field in obj:
            last[obj["external_id"]] = obj[field]
    return last
