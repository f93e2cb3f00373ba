"""Small helpers for end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# The tests' import of them; tests/processes.py is where they live.
from tests.processes import free_port as free_port
from tests.processes import tail as tail
from tests.processes import wait_until as wait_until

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


def outcome_counts(stats_output: str) -> dict[str, int]:
    """The outcome counters of ``prefsync stats`` output: the lines under its
    ``outcome<TAB>count`` header, up to the blank line before the backlog."""
    lines = stats_output.splitlines()
    counts = lines[lines.index("outcome\tcount") + 1 :]
    counts = counts[: counts.index("")] if "" in counts else counts
    return {
        name: int(value) for name, value in (line.split("\t") for line in counts if "\t" in line)
    }
