"""When each mapping last matched an event: recorded by the worker with the outcomes, shown
by `prefsync connectors check` and `prefsync stats --tenant`, so that a mapping that never
matches (a property the PMP never sends) is visible."""

from __future__ import annotations

import json
from typing import Any

import pytest
import responses
from redis.client import Pipeline

from tests.unit.cli.test_cli import braze_config, event, run
from worker.connectors.config import parse_config
from worker.core.events import parse_event
from worker.delivery.runtime import Runtime

TRACK = "https://rest.fra-01.braze.eu/users/track"


def test_a_delivery_records_when_each_mapping_matched_in_one_write(
    rt: Runtime, mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mocked.post(TRACK, status=201, json={"message": "success"})
    config = parse_config(braze_config())
    second = event()
    second["parameters"]["entity"].update(id="e-2", user={"organization_user_id": "u-2"})
    events = [parse_event(event()), parse_event(second)]
    monkeypatch.setattr("worker.records.recorder.clock", lambda: 1_800_000_000.0)
    written: list[str] = []
    hset = Pipeline.hset

    def recorded_hset(pipe: Pipeline, name: str, *args: Any, **kwargs: Any) -> Any:
        written.append(name)
        return hset(pipe, name, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "hset", recorded_hset)

    rt.deliverer.deliver("acme", events, config)

    # OPTED_IN <- newsletter, the group <- product_updates, newsletter_frequency <- its
    # value; UNSUBSCRIBED's property (email_optout) is in no event.
    assert rt.recorder.last_matched("acme", config) == [
        1_800_000_000.0,
        None,
        1_800_000_000.0,
        1_800_000_000.0,
    ]
    assert [name for name in written if name.startswith("prefsync:matched:")] == [
        'prefsync:matched:["acme","braze"]'
    ]


def test_no_match_writes_nothing(rt: Runtime, mocked: responses.RequestsMock) -> None:
    config = parse_config(braze_config())
    payload = event()
    payload["parameters"]["entity"]["consents"]["purposes"] = [{"id": "other", "enabled": True}]

    rt.deliverer.deliver("acme", [parse_event(payload)], config)

    assert rt.recorder.last_matched("acme", config) == [None] * 4
    assert not rt.redis.keys("prefsync:matched:*")


def record_match(rt: Runtime, *properties: str) -> None:
    config = rt.configs.get("acme", "braze")
    rt.recorder.record("acme", "braze", [], also=rt.recorder.matches("acme", config, [properties]))


def test_connectors_check_shows_when_each_mapping_last_matched(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    monkeypatch.setattr("worker.records.recorder.clock", lambda: 1_800_000_000.0)
    record_match(rt, "consents_purposes_newsletter_enabled")

    result = run("connectors", "check", "acme")

    assert result.exit_code == 0
    assert result.output.splitlines() == [
        "braze (braze): valid",
        "  OPTED_IN <- consents_purposes_newsletter_enabled: last matched "
        "2027-01-15T08:00:00+00:00",
        "  UNSUBSCRIBED <- consents_purposes_email_optout_enabled: never matched",
        "  7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55 <- consents_purposes_product_updates_enabled: "
        "never matched",
        "  newsletter_frequency <- consents_purposes_newsletter_values_frequency_value: "
        "never matched",
        "  delivery: batches of up to 50 users per POST /users/track call",
        "0 invalid config(s), 3 mapping(s) never matched an event",
    ]


def test_a_mapping_pointed_at_another_property_has_not_matched_yet(rt: Runtime) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    record_match(rt, "consents_purposes_newsletter_enabled")
    changed = braze_config()
    changed["mappings"][0]["value"] = "consents_purposes_weekly_news_enabled"
    run("connectors", "put", "acme", "-", input=json.dumps(changed))

    assert rt.recorder.last_matched("acme", rt.configs.get("acme", "braze"))[0] is None


def test_connectors_check_exits_1_naming_an_invalid_stored_config(rt: Runtime) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    stored = json.loads(
        rt.sealer.open(rt.redis.hget("prefsync:connectors:acme", "braze"), "acme", "braze")
    )
    stored["mappings"][1]["value"] = "consents_purposes_email_optout_enabld"
    rt.redis.hset(
        "prefsync:connectors:acme", "braze", rt.sealer.seal(json.dumps(stored), "acme", "braze")
    )

    result = run("connectors", "check", "acme")
    listed = run("connectors", "list", "acme")

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0] == "braze: INVALID, every event for it is dead-lettered"
    assert lines[1].startswith(
        "  tenant 'acme', connector 'braze': stored config no longer valid: mappings[1].value: "
        "'consents_purposes_email_optout_enabld' (mapping UNSUBSCRIBED) is not a property name"
    )
    assert lines[-1] == "1 invalid config(s), 0 mapping(s) never matched an event"
    assert listed.output.startswith("braze\tINVALID: tenant 'acme', connector 'braze': ")


def test_stats_for_a_tenant_lists_its_mappings_last_matches(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    monkeypatch.setattr("worker.records.recorder.clock", lambda: 1_800_000_000.0)
    record_match(rt, "consents_purposes_product_updates_enabled")

    output = run("stats", "--tenant", "acme", "--mappings").output.splitlines()
    mappings = output[output.index("mappings of braze:") :]

    assert output[:2] == ["outcome\tcount", "no outcomes recorded yet"]
    assert mappings[3] == (
        "  7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55 <- consents_purposes_product_updates_enabled: "
        "last matched 2027-01-15T08:00:00+00:00"
    )
    assert "mappings of braze:" not in run("stats", "--tenant", "acme").output
    assert run("stats", "--mappings").exit_code == 2


def test_deleting_a_connector_forgets_its_matches(rt: Runtime) -> None:
    run("connectors", "put", "acme", "-", input=json.dumps(braze_config()))
    record_match(rt, "consents_purposes_newsletter_enabled")

    run("connectors", "delete", "acme", "braze")

    assert not rt.redis.keys("prefsync:matched:*")
