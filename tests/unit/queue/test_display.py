"""What a prefsync task's message shows Flower (worker.queue.display.describe_arguments /
describe_keywords): counts, types, tenants, consent event ids, the connector; no person."""

from __future__ import annotations

import json

from worker.queue.display import describe_arguments, describe_keywords, shown_without_people


def user_updated(user: str, pmp_id: str) -> dict:
    entity = {"id": pmp_id, "organization_id": "acme", "organization_user_id": user}
    return {"type": "user.updated", "parameters": {"old_entity": entity, "new_entity": entity}}


def consent(event_id: str, user: str, tenant: str = "acme") -> dict:
    entity = {"id": event_id, "organization_id": tenant, "user": {"organization_user_id": user}}
    return {"type": "event.created", "parameters": {"entity": entity}}


def test_a_delivery_batch_is_shown_by_counts_types_tenants_and_consent_event_ids():
    payloads = [
        consent("ev-1", "alice@example.com"),
        consent("ev-2", "bob@example.com", tenant="beta"),
        user_updated("carol@example.com", "pmp-carol"),
        "not an event",
    ]
    shown = describe_arguments([payloads, "braze"])
    assert json.loads(shown) == {
        "events": 4,
        "types": {"event.created": 2, "user.updated": 1, "invalid": 1},
        "tenants": ["?", "acme", "beta"],
        "event_ids": ["ev-1", "ev-2"],
        "connector": "braze",
    }
    for person in ("alice@", "bob@", "carol@", "pmp-carol"):
        assert person not in shown


def test_attempts_are_counted_not_listed():
    attempts = [{"at": 1.0, "status": 400, "error": "bad value for alice@example.com"}]
    assert json.loads(describe_keywords({"attempts": attempts})) == {"attempts": 1}
    assert describe_keywords({}) == "{}"


def test_only_prefsync_tasks_are_rewritten():
    headers = {"argsrepr": "('x',)"}
    shown_without_people(sender="celery.backend_cleanup", body=((), {}, {}), headers=headers)
    assert headers == {"argsrepr": "('x',)"}
    shown_without_people(
        sender="prefsync.route", body=([[consent("e", "u")]], {}, {}), headers=headers
    )
    assert json.loads(headers["argsrepr"])["events"] == 1
