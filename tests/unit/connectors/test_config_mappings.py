"""What a config's mappings are checked against when it is stored (and read back): the
reserved destination names and the property grammar (docs/mappings.md).
"""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
import responses
from structlog.testing import capture_logs

from tests.unit.queue.harness import (
    TENANT,
    Harness,
    braze_config,
    event,
    harness,  # noqa: F401 (fixture)
)
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig, Mapping
from worker.core.errors import InvalidConfig
from worker.core.events import PROPERTY_SHAPES, is_property_name
from worker.infra.sealing import Sealer, new_key
from worker.queue.tasks import deliver
from worker.records.configs import ConfigStore

KEY = "test-key-0000-abcdefgh"
PROPERTY = "consents_purposes_newsletter_enabled"


def braze(*mappings: dict[str, str]) -> dict[str, Any]:
    return {
        "type_id": "braze",
        "authentication": {"api_key": KEY, "server": "https://rest.fra-01.braze.eu"},
        "mappings": list(mappings),
    }


def brevo(*mappings: dict[str, str]) -> dict[str, Any]:
    return {"type_id": "brevo", "config": {"api_key": KEY, "properties": list(mappings)}}


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)
    return str(caught.value).splitlines()


# -- reserved names ---------------------------------------------------------------------

BRAZE_RESERVED = {
    "external_id": "identifies the Braze user",
    "braze_id": "identifies the Braze user",
    "user_alias": "identifies the Braze user",
    "email": "map OPTED_IN or UNSUBSCRIBED",
    "phone": "use the subscription group's id (its UUID)",
    "email_subscribe": "map OPTED_IN or UNSUBSCRIBED",
    "push_subscribe": "map PUSH_OPTED_IN or PUSH_UNSUBSCRIBED",
    "subscription_groups": "use the subscription group's id (its UUID)",
    "subscription_group_id": "use the subscription group's id (its UUID)",
    "_update_existing_only": "upsert_mode",
    "_merge_objects": "not a field of the user",
}
BREVO_RESERVED = {
    "EMAIL": "map EMAIL_CAMPAIGNS_SUBSCRIBED",
    "SMS": "map SMS_CAMPAIGNS_SUBSCRIBED",
    "EXT_ID": "identifies the Brevo contact",
    "WHATSAPP": "identifies the Brevo contact",
    "emailBlacklisted": "map EMAIL_CAMPAIGNS_SUBSCRIBED",
    "smsBlacklisted": "map SMS_CAMPAIGNS_SUBSCRIBED",
    "listIds": "list_id option",
    "unlinkListIds": "list_id option",
    "updateEnabled": "set by the connector",
}


def spellings(name: str) -> list[str]:
    return [name, name.upper(), name.lower(), name.swapcase()]


@pytest.mark.parametrize(
    ("mapping_id", "hint"),
    [(spelling, hint) for name, hint in BRAZE_RESERVED.items() for spelling in spellings(name)],
)
def test_braze_refuses_a_reserved_id_naming_what_to_map_instead(mapping_id: str, hint: str) -> None:
    (line,) = problems(braze({"id": mapping_id, "value": PROPERTY}))

    assert line.startswith(
        f"mappings[0].id: {mapping_id!r} is reserved by Braze and never a custom attribute: "
    )
    assert hint in line


@pytest.mark.parametrize(
    ("mapping_id", "hint"),
    [(spelling, hint) for name, hint in BREVO_RESERVED.items() for spelling in spellings(name)],
)
def test_brevo_refuses_a_reserved_id_naming_what_to_map_instead(mapping_id: str, hint: str) -> None:
    (line,) = problems(brevo({"id": mapping_id, "value": PROPERTY}))

    assert line.startswith(
        f"config.properties[0].id: {mapping_id!r} is reserved by Brevo and never an attribute: "
    )
    assert hint in line


@pytest.mark.parametrize(
    "raw",
    [
        braze(*({"id": name, "value": PROPERTY} for name in ("email_frequency", "phone_type"))),
        braze({"id": "subscription_group", "value": PROPERTY}),
        brevo({"id": "EMAIL_NOTIFICATION", "value": PROPERTY}, {"id": "SMS_OPT", "value": "x"}),
        brevo({"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": PROPERTY}),
    ],
)
def test_names_that_only_look_like_reserved_ones_are_accepted(raw: dict[str, Any]) -> None:
    try:
        parse_config(raw)
    except InvalidConfig as exc:
        assert "reserved" not in str(exc)


def test_every_problem_of_the_mappings_is_reported_at_once() -> None:
    lines = problems(
        braze(
            {"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabld"},
            {"id": "push_subscribe", "value": "consents_channels_push_enabled"},
            {"id": "Email", "value": PROPERTY},
            {"id": "subscription_group_id", "value": "consents_purpose_sms_enabled"},
        )
    )

    assert [line.split(":")[0] for line in lines] == [
        "mappings[0].value",
        "mappings[1].id",
        "mappings[2].id",
        "mappings[3].id",
        "mappings[3].value",
    ]


def test_a_stored_config_with_a_reserved_id_is_refused_when_read() -> None:
    # Stored by a release that did not check the names yet.
    store = ConfigStore(fakeredis.FakeRedis(), Sealer([new_key()]))
    stored = parse_config(braze({"id": "newsletter", "value": PROPERTY})).to_stored()
    stored["mappings"] = [{"id": "push_subscribe", "value": PROPERTY}]
    sealed = store.sealer.seal(json.dumps(stored), "acme", "braze")
    store.redis.hset("prefsync:connectors:acme", "braze", sealed)

    with pytest.raises(InvalidConfig) as caught:
        store.get("acme", "braze")

    assert str(caught.value).startswith(
        "tenant 'acme', connector 'braze': stored config no longer valid: "
        "mappings[0].id: 'push_subscribe' is reserved by Braze"
    )
    assert "PUSH_OPTED_IN" in str(caught.value)


def test_the_store_refuses_a_config_built_without_parse_config() -> None:
    valid = parse_config(braze({"id": "newsletter", "value": PROPERTY}))
    built = ConnectorConfig(
        **{**dict(valid), "mappings": (Mapping(id="push_subscribe", value=PROPERTY),)}
    )
    store = ConfigStore(fakeredis.FakeRedis(), Sealer([new_key()]))

    with pytest.raises(InvalidConfig, match="'push_subscribe' is reserved by Braze"):
        store.put("acme", built)
    assert store.ids("acme") == []


# -- the property grammar ---------------------------------------------------------------

GRAMMATICAL = [
    "consents_purposes_newsletter_enabled",
    "consents_purposes_geolocation_data_enabled",
    "consents_purposes_newsletter_enabled_li",
    "consents_purposes_newsletter_values_frequency_value",
    "consents_purposes_newsletter_preferences_frequency_values_weekly_enabled",
    "consents_channels_email_enabled",
    "consents__purposes__newsletter__enabled",
    "consents__purposes__newsletter__preferences__frequency__values__weekly__enabled",
    "consents_channels__sms__enabled",
    # A purpose whose id ends in "_enabld": odd, but a payload can carry it.
    "consents_purposes_x_enabld_enabled",
]
TYPOS = [
    "consents_purposes_newsletter_enabld",
    "consents_purposes_newsletter_enable",
    "consents_purpose_newsletter_enabled",
    "consent_purposes_newsletter_enabled",
    "consents_purposes_newsletter",
    "consents_purposes_enabled",
    "consents_purposes_newsletter_enabled__li",
    "consents_purposes_newsletter_values_frequency",
    "consents_channels_email_enabled_li",
    "consents_vendors_google_enabled",
    "newsletter",
    "purposes_newsletter_enabled",
    "Consents_purposes_newsletter_enabled",
]


@pytest.mark.parametrize("name", GRAMMATICAL)
def test_grammatical_names_are_property_names(name: str) -> None:
    assert is_property_name(name)
    parse_config(braze({"id": "OPTED_IN", "value": name}))


@pytest.mark.parametrize("name", TYPOS)
def test_a_name_the_grammar_cannot_produce_is_refused_naming_the_mapping(name: str) -> None:
    assert not is_property_name(name)

    (line,) = problems(braze({"id": "OPTED_IN", "value": name}))

    assert line.startswith(
        f"mappings[0].value: {name!r} (mapping OPTED_IN) is not a property name an event "
        "can carry, so it would never have a value; the names are "
    )
    assert all(shape in line for shape in PROPERTY_SHAPES)


# -- a stored config that no longer validates stops its deliveries ----------------------


def test_events_for_a_stored_config_that_no_longer_validates_are_dead_lettered_unsent(
    harness: Harness,  # noqa: F811 (the fixture imported above)
    mocked: responses.RequestsMock,
) -> None:
    connector_id = braze_config(harness)
    key = f"prefsync:connectors:{TENANT}"
    stored = json.loads(
        harness.rt.sealer.open(harness.rt.redis.hget(key, connector_id), TENANT, connector_id)
    )
    stored["mappings"][0]["id"] = "email_subscribe"
    harness.rt.redis.hset(
        key, connector_id, harness.rt.sealer.seal(json.dumps(stored), TENANT, connector_id)
    )

    with capture_logs() as logs:
        harness.worker.send(deliver, [event()], connector_id)
        harness.worker.drain()

    assert len(mocked.calls) == 0
    [entry] = harness.dead_letters()
    assert entry.reason.startswith(
        f"connector config no longer valid: tenant {TENANT!r}, connector {connector_id!r}: "
        "stored config no longer valid: mappings[0].id: 'email_subscribe' is reserved by Braze"
    )
    assert "map OPTED_IN or UNSUBSCRIBED" in entry.reason
    assert entry.reason.endswith(
        "(store a corrected config with `prefsync connectors put`, then replay these dead letters)"
    )
    [error] = [log for log in logs if log["event"] == "dead-lettered"]
    assert (error["log_level"], error["connector_id"]) == ("error", connector_id)


# -- ids that look like a keyword ------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "meant"),
    [
        (braze({"id": "OPTED_IM", "value": PROPERTY}), "OPTED_IN"),
        (braze({"id": "UNSUBSCRIBE", "value": PROPERTY}), "UNSUBSCRIBED"),
        (braze({"id": "push_opted_on", "value": PROPERTY}), "PUSH_OPTED_IN"),
        (
            brevo({"id": "EMAIL_CAMPAIGN_SUBSCRIBED", "value": PROPERTY}),
            "EMAIL_CAMPAIGNS_SUBSCRIBED",
        ),
    ],
)
def test_a_new_mapping_id_a_letter_or_two_from_a_keyword_is_refused_with_the_keyword(
    config: dict[str, Any], meant: str
) -> None:
    path = "mappings" if "mappings" in config else "config.properties"
    mapping_id = (config.get("mappings") or config["config"]["properties"])[0]["id"]
    with pytest.raises(InvalidConfig) as refused:
        parse_config(config, storing=True)

    assert str(refused.value) == (
        f"{path}[0].id: {mapping_id!r} is not a keyword: did you mean "
        f'{meant!r}? If it is a custom attribute of that name, add "custom": true to the '
        "mapping"
    )
    # A config stored before the check is still read (and delivered) as it was.
    assert parse_config(config).mappings[0].id == mapping_id


def test_custom_true_keeps_a_look_alike_id_as_a_custom_attribute_and_survives_storing() -> None:
    config = parse_config(
        braze({"id": "OPTED_IM", "value": PROPERTY, "custom": True}), storing=True
    )

    assert config.connector.feed("OPTED_IM") is None
    assert config.to_stored()["mappings"] == [{"id": "OPTED_IM", "value": PROPERTY, "custom": True}]
    assert parse_config(config.to_stored(), storing=True).mappings == config.mappings


def test_custom_true_on_a_keyword_is_refused() -> None:
    with pytest.raises(InvalidConfig, match=r"'OPTED_IN' feeds email_subscribe, it cannot be a "):
        parse_config(braze({"id": "OPTED_IN", "value": PROPERTY, "custom": True}))


@pytest.mark.parametrize(
    "mapping_id", ["OPTED_IN", "opted_in", "newsletter_frequency", "OPTED_IN_AT", "plan"]
)
def test_keywords_in_any_case_and_ordinary_custom_attributes_are_stored(mapping_id: str) -> None:
    stored = parse_config(braze({"id": mapping_id, "value": PROPERTY}), storing=True)

    assert stored.to_stored()["mappings"] == [{"id": mapping_id, "value": PROPERTY}]
