"""`prefsync preview`: the dry run shows, for each of a tenant's connectors, the properties an
event gives its mappings and the exact requests a delivery would send (keys masked), or why
it would skip, and sends nothing. Run against fakeredis, with `responses` active and no URL
registered, so that any HTTP call would fail the test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from click.testing import CliRunner, Result

from worker.cli import main
from worker.connectors.config import parse_config
from worker.delivery.runtime import Runtime
from worker.infra.settings import get_settings
from worker.records.configs import KEY_PREFIX

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
BRAZE_KEY = "braze-rest-key-abcdef-0123456789"
BREVO_KEY = "xkeysib-0123456789abcdef-WXYZ"
TRACK = "https://rest.fra-01.braze.eu/users/track"
BREVO = "https://api.brevo.com/v3"
JANE = "jane.doe@example.com"
BRAZE_HEADERS = {"Authorization": "Bearer …6789", "Content-Type": "application/json"}
BREVO_HEADERS = {
    "api-key": "…WXYZ",
    "Content-Type": "application/json",
    "Accept": "application/json",
}


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The Brevo base URL is read from the settings at every call: pin the default one.
    monkeypatch.delenv("PREFSYNC_SENDINBLUE_API_URL", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def braze_config(**changes: Any) -> dict[str, Any]:
    config = json.loads((EXAMPLES / "connectors" / "braze.json").read_text())
    config["authentication"]["api_key"] = BRAZE_KEY
    return {**config, **changes}


def brevo_config(**changes: Any) -> dict[str, Any]:
    config = json.loads((EXAMPLES / "connectors" / "sendinblue.json").read_text())
    config["config"]["api_key"] = BREVO_KEY
    return {**config, **changes}


@pytest.fixture
def both(rt: Runtime) -> Runtime:
    """Tenant acme with the two example connectors, upsert on for Brevo as the example has."""
    rt.configs.put("acme", parse_config(braze_config()))
    rt.configs.put("acme", parse_config(brevo_config()))
    return rt


def example_event(name: str = "event-created.json") -> dict[str, Any]:
    return json.loads((EXAMPLES / "events" / name).read_text())


def event_file(tmp_path: Path, payload: Any, name: str = "event.json") -> str:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def parse_text(output: str) -> list[dict[str, Any]]:
    """The text output read back into the shape `--json` gives, so the two can be compared
    and every line is accounted for (an unexpected line fails the test)."""
    previews: list[dict[str, Any]] = []
    for line in output.splitlines():
        if line.startswith("connector "):
            connector_id, type_id = line.removeprefix("connector ").split(" ")
            previews.append(
                {
                    "connector_id": connector_id,
                    "type_id": type_id.strip("()"),
                    "properties": None,
                    "requests": [],
                    "skipped": None,
                }
            )
        elif line.startswith("  properties: "):
            previews[-1]["properties"] = json.loads(line.removeprefix("  properties: "))
        elif line.startswith("  skipped: "):
            previews[-1]["skipped"] = line.removeprefix("  skipped: ")
        elif line.startswith("  request "):
            number, _, request = line.removeprefix("  request ").partition(": ")
            assert int(number) == len(previews[-1]["requests"]) + 1
            method, url = request.split(" ")
            previews[-1]["requests"].append({"method": method, "url": url})
        elif line.startswith("    headers: "):
            previews[-1]["requests"][-1]["headers"] = json.loads(line.removeprefix("    headers: "))
        elif line.startswith("    body: "):
            previews[-1]["requests"][-1]["body"] = json.loads(line.removeprefix("    body: "))
        else:
            raise AssertionError(f"unexpected line in the preview: {line!r}")
    return previews


def assert_no_key_in_full(output: str) -> None:
    for key in (BRAZE_KEY, BREVO_KEY):
        assert key not in output
        assert key[-5:] not in output  # no more than the last 4 characters
        assert key[:8] not in output  # nor its beginning


# -- the example event, both connectors ------------------------------------------------------


@responses.activate
def test_example_event_previews_both_connectors_exactly(both: Runtime, tmp_path: Path) -> None:
    result = run("preview", "acme", event_file(tmp_path, example_event()))

    assert result.exit_code == 0, result.output
    assert_no_key_in_full(result.output)
    assert "Bearer …6789" in result.output and '"api-key": "…WXYZ"' in result.output
    braze, brevo = parse_text(result.stdout)

    assert braze == {
        "connector_id": "braze",
        "type_id": "braze",
        "properties": {
            "consents_purposes_newsletter_enabled": True,
            "consents_purposes_product_updates_enabled": False,
            "consents_purposes_newsletter_values_frequency_value": "weekly",
        },
        "requests": [
            {
                "method": "POST",
                "url": TRACK,
                "headers": BRAZE_HEADERS,
                "body": {
                    "attributes": [
                        {
                            "external_id": JANE,
                            "_update_existing_only": True,
                            "email_subscribe": "opted_in",
                            "subscription_groups": [
                                {
                                    "subscription_group_id": (
                                        "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
                                    ),
                                    "subscription_state": "unsubscribed",
                                }
                            ],
                            "newsletter_frequency": "weekly",
                        }
                    ]
                },
            }
        ],
        "skipped": None,
    }

    fields = {"attributes": {"EMAIL_NOTIFICATION": False}, "emailBlacklisted": False}
    assert brevo == {
        "connector_id": "sendinblue",
        "type_id": "sendinblue",
        "properties": {
            "consents_purposes_newsletter_enabled": True,
            "consents_purposes_product_updates_enabled": False,
        },
        "requests": [
            {
                "method": "PUT",
                "url": f"{BREVO}/contacts/jane.doe%40example.com?identifierType=email_id",
                "headers": BREVO_HEADERS,
                "body": fields,
            },
            {  # the create a delivery falls back to after Brevo's 404, upsert being on
                "method": "POST",
                "url": f"{BREVO}/contacts",
                "headers": BREVO_HEADERS,
                "body": {"email": JANE, **fields, "listIds": [12], "updateEnabled": True},
            },
        ],
        "skipped": None,
    }
    # The request lines as an operator reads them.
    assert (
        f"  request 1: PUT {BREVO}/contacts/jane.doe%40example.com?identifierType=email_id\n"
        in (result.stdout)
    )
    assert f"  request 2: POST {BREVO}/contacts\n" in result.stdout
    assert f"  request 1: POST {TRACK}\n" in result.stdout


@responses.activate
def test_brevo_with_upsert_off_previews_the_update_alone(rt: Runtime, tmp_path: Path) -> None:
    rt.configs.put("acme", parse_config(brevo_config(upsert_mode=False)))

    result = run("preview", "acme", event_file(tmp_path, example_event()))

    assert result.exit_code == 0, result.output
    [brevo] = parse_text(result.stdout)
    assert [(r["method"], r["url"]) for r in brevo["requests"]] == [
        ("PUT", f"{BREVO}/contacts/jane.doe%40example.com?identifierType=email_id")
    ]


# -- nothing is sent ------------------------------------------------------------------------


@responses.activate
def test_nothing_is_sent_and_nothing_is_recorded(both: Runtime, tmp_path: Path) -> None:
    # The guard is live: with no URL registered, any HTTP call fails.
    with pytest.raises(requests.ConnectionError):
        requests.post(TRACK, json={}, timeout=1)
    responses.calls.reset()
    keys_before = sorted(both.redis.keys())
    path = event_file(tmp_path, example_event())

    text = run("preview", "acme", path)
    as_json = run("preview", "acme", path, "--json")

    assert (text.exit_code, as_json.exit_code) == (0, 0), text.output + as_json.output
    assert len(responses.calls) == 0
    # No newest-wins state, no done marker, no audit entry, no counter, no dead letter.
    assert sorted(both.redis.keys()) == keys_before
    assert both.audit.query("acme") == []
    assert both.recorder.counts(None, None) == {}


# -- skips and differences -----------------------------------------------------------------


@responses.activate
def test_a_connector_limited_to_another_regulation_is_skipped(rt: Runtime, tmp_path: Path) -> None:
    rt.configs.put("acme", parse_config(braze_config(regulations=["cpra"])))
    rt.configs.put("acme", parse_config(brevo_config()))

    result = run("preview", "acme", event_file(tmp_path, example_event()))

    assert result.exit_code == 0, result.output
    braze, brevo = parse_text(result.stdout)
    assert braze["requests"] == [] and braze["properties"] == {}
    assert braze["skipped"].startswith("other_regulation")
    assert "gdpr" in braze["skipped"]  # says which regulation the event has
    assert "  skipped: other_regulation" in result.stdout
    assert len(brevo["requests"]) == 2 and brevo["skipped"] is None  # the other one unaffected
    assert len(responses.calls) == 0


@responses.activate
def test_user_updated_previews_only_what_changed(both: Runtime, tmp_path: Path) -> None:
    result = run("preview", "acme", event_file(tmp_path, example_event("user-updated.json")))

    assert result.exit_code == 0, result.output
    braze, brevo = parse_text(result.stdout)
    # product_updates stayed false (as event-created.json set it): neither its property nor
    # its subscription group appears.
    assert braze["properties"] == {
        "consents_purposes_newsletter_enabled": False,
        "consents_purposes_email_optout_enabled": True,
    }
    [track] = braze["requests"]
    assert track["body"] == {
        "attributes": [
            {
                "external_id": JANE,
                "_update_existing_only": True,
                "email_subscribe": "unsubscribed",
            }
        ]
    }
    assert brevo["properties"] == {"consents_purposes_newsletter_enabled": False}
    update, create = brevo["requests"]
    assert update["body"] == {"emailBlacklisted": True}  # no EMAIL_NOTIFICATION attribute
    assert create["body"] == {
        "email": JANE,
        "emailBlacklisted": True,
        "listIds": [12],
        "updateEnabled": True,
    }
    assert "EMAIL_NOTIFICATION" not in result.output
    assert "product_updates" not in result.output
    assert len(responses.calls) == 0


@responses.activate
def test_a_pending_consent_event_is_skipped_by_every_connector(
    both: Runtime, tmp_path: Path
) -> None:
    payload = example_event()
    payload["parameters"]["entity"]["status"] = "pending_approval"
    path = event_file(tmp_path, payload)

    text = run("preview", "acme", path)
    as_json = run("preview", "acme", path, "--json")

    assert (text.exit_code, as_json.exit_code) == (0, 0), text.output + as_json.output
    previews = parse_text(text.stdout)
    assert [(p["connector_id"], p["skipped"], p["requests"]) for p in previews] == [
        ("braze", "pending", []),
        ("sendinblue", "pending", []),
    ]
    assert text.stdout.count("  skipped: pending\n") == 2
    assert "request" not in text.stdout
    assert [(p["skipped"], p["requests"]) for p in json.loads(as_json.stdout)] == [
        ("pending", []),
        ("pending", []),
    ]
    assert len(responses.calls) == 0


# -- --json ---------------------------------------------------------------------------------


@responses.activate
@pytest.mark.parametrize("event_name", ["event-created.json", "user-updated.json"])
def test_json_output_parses_and_matches_the_text(
    both: Runtime, tmp_path: Path, event_name: str
) -> None:
    path = event_file(tmp_path, example_event(event_name))

    text = run("preview", "acme", path)
    as_json = run("preview", "acme", path, "--json")

    assert (text.exit_code, as_json.exit_code) == (0, 0), text.output + as_json.output
    previews = json.loads(as_json.stdout)
    assert previews == parse_text(text.stdout)
    assert [p["connector_id"] for p in previews] == ["braze", "sendinblue"]
    assert [len(p["requests"]) for p in previews] == [1, 2]
    assert previews[0]["requests"][0]["headers"] == BRAZE_HEADERS
    assert previews[1]["requests"][0]["headers"] == BREVO_HEADERS
    assert_no_key_in_full(as_json.output)
    assert len(responses.calls) == 0


@responses.activate
def test_a_tenant_without_connectors_says_nothing_would_be_sent(
    rt: Runtime, tmp_path: Path
) -> None:
    path = event_file(tmp_path, example_event())

    text = run("preview", "acme", path)
    as_json = run("preview", "acme", path, "--json")

    assert (text.exit_code, as_json.exit_code) == (0, 0)
    assert "has no connectors: nothing would be sent" in text.stdout
    assert json.loads(as_json.stdout) == []


# -- refused input --------------------------------------------------------------------------


def assert_refused(result: Result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    assert result.stdout == ""  # no preview at all
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1  # one clear line, no traceback
    for part in expected:
        assert part in result.stderr


@responses.activate
def test_an_event_of_another_tenant_is_refused(both: Runtime, tmp_path: Path) -> None:
    payload = example_event()
    payload["parameters"]["entity"]["organization_id"] = "globex"
    path = event_file(tmp_path, payload)

    for args in ((), ("--json",)):
        result = run("preview", "acme", path, *args)
        assert_refused(result, "'globex'", "'acme'", "tenant")
    assert len(responses.calls) == 0


@responses.activate
def test_an_invalid_event_is_refused_naming_the_problem(both: Runtime, tmp_path: Path) -> None:
    wrong_type = example_event()
    wrong_type["type"] = "event.exploded"
    no_user = example_event()
    del no_user["parameters"]["entity"]["user"]

    refused = [
        run("preview", "acme", event_file(tmp_path, wrong_type, "type.json")),
        run("preview", "acme", event_file(tmp_path, no_user, "user.json")),
        run("preview", "acme", event_file(tmp_path, [example_event()], "list.json")),
    ]

    assert_refused(refused[0], "type.json", "type:", "event.exploded")
    assert_refused(refused[1], "user.json", "user")
    assert_refused(refused[2], "list.json", "JSON object")
    assert len(responses.calls) == 0


@responses.activate
@pytest.mark.parametrize("text", ['{"type": "event.created",', "", "not json"])
def test_invalid_json_is_refused(both: Runtime, tmp_path: Path, text: str) -> None:
    result = run("preview", "acme", event_file(tmp_path, text, "broken.json"))

    assert_refused(result, "broken.json", "not valid JSON")
    assert len(responses.calls) == 0


# -- what the worker would refuse is shown, not crashed on --------------------------------------


@responses.activate
def test_a_mapping_that_cannot_take_the_value_is_shown_as_refused(
    rt: Runtime, tmp_path: Path
) -> None:
    # OPTED_IN needs true/false; this one points at a text preference.
    config = braze_config()
    config["mappings"] = [
        {"id": "OPTED_IN", "value": "consents_purposes_newsletter_values_frequency_value"}
    ]
    rt.configs.put("acme", parse_config(config))
    rt.configs.put("acme", parse_config(brevo_config()))

    result = run("preview", "acme", event_file(tmp_path, example_event()), "--json")

    assert result.exit_code == 0, result.output
    braze, brevo = json.loads(result.stdout)
    assert braze["requests"] == [] and braze["skipped"].startswith("refused: ")
    assert "OPTED_IN" in braze["skipped"]
    assert brevo["skipped"] is None and len(brevo["requests"]) == 2
    assert len(responses.calls) == 0


@responses.activate
def test_a_stored_config_that_no_longer_validates_is_shown_as_broken(
    both: Runtime, tmp_path: Path
) -> None:
    both.redis.hset(f"{KEY_PREFIX}acme", "old", "{not json")

    result = run("preview", "acme", event_file(tmp_path, example_event()), "--json")

    assert result.exit_code == 0, result.output
    previews = {p["connector_id"]: p for p in json.loads(result.stdout)}
    assert "not JSON" in previews["old"]["skipped"] and previews["old"]["requests"] == []
    assert len(previews["braze"]["requests"]) == 1
    assert len(responses.calls) == 0


def test_an_event_over_the_size_limit_is_refused_as_enqueue_would(
    both: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFSYNC_MAX_EVENT_BYTES", "1000")
    get_settings.cache_clear()
    payload = example_event()
    payload["parameters"]["entity"]["metadata"] = {"note": "x" * 2000}

    assert_refused(run("preview", "acme", event_file(tmp_path, payload)), "limit")


def test_a_file_that_is_not_utf8_is_refused(both: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{"type": "caf\xe9"}')

    assert_refused(run("preview", "acme", str(path)), "latin1.json", "not UTF-8")
    assert run("enqueue", str(path)).exit_code == 1
