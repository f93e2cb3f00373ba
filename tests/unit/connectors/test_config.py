"""Connector configs: both shapes, every refusal naming its field, the Braze server rules,
secrets kept out of every output, and the per-tenant Redis store."""

from __future__ import annotations

import ast
import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import fakeredis
import pytest

import worker.records.configs
from worker.connectors import CONNECTORS, KNOWN_TYPE_IDS, connectors, get_connector
from worker.connectors.base import ConnectorSettings
from worker.connectors.braze import BrazeConnector
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig, Mapping
from worker.connectors.sendinblue import SendinblueConnector
from worker.core.errors import InvalidConfig
from worker.delivery.runtime import connector_settings
from worker.infra.sealing import Sealer, new_key
from worker.infra.settings import Settings
from worker.records.configs import ConfigStore

SEALER = Sealer([new_key()])
ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "connectors"
KEY = "xkeysib-TESTKEY-0123456789abcdef"
BRAZE_SERVER = "https://rest.fra-01.braze.eu"
MAPPINGS = [
    {"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"},
    {"id": "newsletter_frequency", "value": "consents_purposes_newsletter_values_freq_value"},
]


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def braze(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "type_id": "braze",
        "authentication": {"api_key": KEY, "server": BRAZE_SERVER},
        "properties": {},
        "mappings": copy.deepcopy(MAPPINGS),
    }
    raw.update(overrides)
    return raw


def brevo(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "type_id": "sendinblue",
        "upsert_mode": True,
        "config": {"api_key": KEY, "list_id": 12, "properties": copy.deepcopy(MAPPINGS)},
    }
    raw.update(overrides)
    return raw


def problems(raw: object, **kwargs: Any) -> list[str]:
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw, **kwargs)
    return str(caught.value).splitlines()


# -- the two shapes --------------------------------------------------------------------


def test_braze_example_in_newer_shape_and_its_older_twin_give_the_same_config() -> None:
    newer = example("braze")
    older = {
        "type_id": "braze",
        "upsert_mode": False,
        "config": {**newer["authentication"], "properties": newer["mappings"]},
    }

    assert parse_config(newer) == parse_config(older)
    config = parse_config(newer)
    assert config.id == "braze"
    assert config.type_id == "braze"
    assert config.options.server == BRAZE_SERVER
    assert config.mappings[0] == Mapping(
        id="OPTED_IN", value="consents_purposes_newsletter_enabled"
    )
    assert len(config.mappings) == 4


def test_sendinblue_example_in_older_shape_and_its_newer_twin_give_the_same_config() -> None:
    older = example("sendinblue")
    newer = {
        "type_id": "sendinblue",
        "upsert_mode": True,
        "authentication": {"private_api_key": older["config"]["api_key"]},
        "properties": {"list_id": older["config"]["list_id"]},
        "mappings": older["config"]["properties"],
    }

    assert parse_config(older) == parse_config(newer)
    config = parse_config(newer)
    assert config.upsert_mode is True
    assert config.options.list_id == 12
    assert config.options.api_key.get_secret_value() == older["config"]["api_key"]


def test_brevo_alias_becomes_the_canonical_type() -> None:
    config = parse_config(brevo(type_id="Brevo"))

    assert config.type_id == "sendinblue"
    assert config.id == "sendinblue"
    assert isinstance(config.connector, SendinblueConnector)


def test_list_id_given_as_text_is_read_as_a_number() -> None:
    config = parse_config(brevo(config={"api_key": KEY, "list_id": "7", "properties": MAPPINGS}))

    assert config.options.list_id == 7


def test_defaults() -> None:
    config = parse_config(braze())

    assert (config.id, config.enabled, config.upsert_mode, config.regulations) == (
        "braze",
        True,
        False,
        (),
    )


def test_bidirectional_in_both_shapes_default_off_and_stored() -> None:
    assert parse_config(braze()).bidirectional is False
    older = parse_config(brevo(bidirectional=True))
    newer = parse_config(example("sendinblue-bidirectional"))
    assert older.bidirectional and newer.bidirectional
    assert parse_config(newer.to_stored()).bidirectional
    assert newer.describe()["bidirectional"] is True
    assert problems(braze(bidirectional="maybe")) == [
        "bidirectional: input should be a valid boolean, unable to interpret input"
    ]


def test_connector_id_argument_wins_over_the_config_id() -> None:
    assert parse_config(braze(id="from-config")).id == "from-config"
    assert parse_config(braze(id="from-config"), connector_id="eu.workspace_2").id == (
        "eu.workspace_2"
    )


def test_mapping_text_is_stripped() -> None:
    config = parse_config(
        braze(mappings=[{"id": " OPTED_IN ", "value": " consents_purposes_p_enabled "}])
    )

    assert config.mappings == (Mapping(id="OPTED_IN", value="consents_purposes_p_enabled"),)


def test_config_is_frozen() -> None:
    config = parse_config(braze())

    with pytest.raises(ValueError):
        config.enabled = False  # type: ignore[misc]


# -- regulations -----------------------------------------------------------------------


def test_regulations_are_lower_cased_and_distinct() -> None:
    config = parse_config(braze(regulations=[" GDPR", "cpra", "gdpr"]))

    assert config.regulations == ("gdpr", "cpra")


@pytest.mark.parametrize(
    ("regulations", "event_regulation", "accepted"),
    [
        ((), "gdpr", True),
        ((), None, True),
        (("gdpr",), "gdpr", True),
        (("gdpr",), "GDPR", True),
        (("gdpr",), "cpra", False),
        (("gdpr",), None, True),
    ],
)
def test_accepts_regulation(
    regulations: tuple[str, ...], event_regulation: str | None, accepted: bool
) -> None:
    config = parse_config(braze(regulations=list(regulations)))

    assert config.accepts_regulation(event_regulation) is accepted


# -- refusals, each naming its field ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "config: must be a JSON object, not list"),
        (
            braze(type_id="mailchimp"),
            "type_id: unknown 'mailchimp' (known: braze, brevo, sendinblue)",
        ),
        ({k: v for k, v in braze().items() if k != "type_id"}, "type_id: field required"),
        (braze(type_id=3), "type_id: must be a string"),
        (braze(colour="blue"), "colour: unknown field"),
        (braze(authentication={"server": BRAZE_SERVER}), "authentication.api_key: field required"),
        (braze(authentication={"api_key": KEY}), "authentication.server: field required"),
        (
            braze(authentication={"api_key": "  ", "server": BRAZE_SERVER}),
            "authentication.api_key: must not be empty",
        ),
        (
            braze(authentication={"api_key": "two words", "server": BRAZE_SERVER}),
            "authentication.api_key: must be a single token, without spaces or line breaks",
        ),
        (
            braze(authentication={"api_key": KEY, "server": BRAZE_SERVER, "sever": "x"}),
            "authentication.sever: unknown field",
        ),
        (braze(authentication="secret"), "authentication: must be an object"),
        (
            braze(properties=MAPPINGS),
            "properties: must be an object (the mapping list goes in mappings)",
        ),
        (
            braze(properties={"server": BRAZE_SERVER}),
            "properties.server: also given in authentication",
        ),
        ({k: v for k, v in braze().items() if k != "mappings"}, "mappings: field required"),
        (braze(mappings=[]), "mappings: needs at least one mapping"),
        (braze(mappings={"id": "OPTED_IN"}), "mappings: must be a list of {id, value} objects"),
        (braze(mappings=[*MAPPINGS, {"id": "x"}]), "mappings[2].value: field required"),
        (
            braze(mappings=[{"id": "", "value": "p"}]),
            "mappings[0].id: string should have at least 1 character",
        ),
        (
            braze(mappings=[{"id": 5, "value": "p"}]),
            "mappings[0].id: input should be a valid string",
        ),
        (braze(mappings=["OPTED_IN"]), "mappings[0]: must be an object"),
        (
            braze(mappings=[{"id": "a", "value": "p", "note": "n"}]),
            "mappings[0].note: unknown field",
        ),
        (
            braze(mappings=[*MAPPINGS, {"id": "opted_in", "value": "p"}]),
            "mappings[2].id: 'opted_in' is already mapped by mappings[0]",
        ),
        (
            braze(mappings=[{"id": "external_id", "value": "p"}]),
            "mappings[0].id: 'external_id' is reserved by Braze and never a custom attribute: "
            "it identifies the Braze user",
        ),
        (
            braze(mappings=[{"id": "email", "value": "p"}]),
            "mappings[0].id: 'email' is reserved by Braze and never a custom attribute: it "
            "identifies the Braze user, and a mapping must not change who is updated (it is "
            "the address itself); map OPTED_IN or UNSUBSCRIBED",
        ),
        (
            braze(id="has space"),
            "id: must be 1 to 64 characters among letters, digits, '_', '.', '-'",
        ),
        (braze(id="x" * 65), "id: must be 1 to 64 characters"),
        (braze(id=""), "id: must be 1 to 64 characters"),
        (braze(enabled="maybe"), "enabled: input should be a valid boolean"),
        (braze(upsert_mode=None), "upsert_mode: input should be a valid boolean"),
        (braze(regulations="gdpr"), "regulations: input should be a valid tuple"),
        (
            braze(regulations=["gdpr", " "]),
            "regulations[1]: string should have at least 1 character",
        ),
        (brevo(config="x"), "config: must be an object"),
        (
            brevo(mappings=MAPPINGS),
            "config: give either config (older shape) or mappings (newer shape), not both",
        ),
        (brevo(config={"api_key": KEY}), "config.properties: field required"),
        (brevo(config={"properties": MAPPINGS}), "config.api_key: field required"),
        (
            brevo(config={"api_key": KEY, "list_id": 0, "properties": MAPPINGS}),
            "config.list_id: input should be greater than 0",
        ),
        (
            brevo(config={"api_key": KEY, "list_id": True, "properties": MAPPINGS}),
            "config.list_id: must be a positive integer",
        ),
        (
            brevo(config={"api_key": KEY, "list_id": "twelve", "properties": MAPPINGS}),
            "config.list_id: input should be a valid integer",
        ),
        (
            brevo(config={"api_key": KEY, "properties": [{"id": "email", "value": "p"}]}),
            "config.properties[0].id: 'email' is reserved by Brevo and never an attribute: it "
            "identifies the Brevo contact, and a mapping must not change who is updated, and "
            "changing it clears a blocklist; map EMAIL_CAMPAIGNS_SUBSCRIBED",
        ),
        (
            brevo(config={"api_key": KEY, "properties": [{"id": "ext_id", "value": "p"}]}),
            "config.properties[0].id: 'ext_id' is reserved by Brevo and never an attribute: it "
            "identifies the Brevo contact",
        ),
        (
            brevo(
                config={
                    "api_key": KEY,
                    "properties": [{"id": "notif", "value": "a"}, {"id": "NOTIF", "value": "b"}],
                }
            ),
            "config.properties[1].id: 'NOTIF' is already mapped by config.properties[0]",
        ),
        (
            {
                "type_id": "brevo",
                "authentication": {"api_key": KEY, "private_api_key": KEY},
                "mappings": MAPPINGS,
            },
            "authentication: give either api_key or private_api_key, not both",
        ),
    ],
)
def test_refusal_names_the_field(raw: object, expected: str) -> None:
    lines = problems(raw)

    assert any(line.startswith(expected) for line in lines), lines


def test_every_problem_is_reported_at_once_one_line_each() -> None:
    raw = braze(
        id="bad id",
        regulations=[""],
        authentication={"api_key": KEY, "server": "https://dashboard-01.braze.com"},
        mappings=[{"id": "a"}],
    )

    assert problems(raw) == [
        "authentication.server: dashboard-01.braze.com is the US-01 dashboard, not the REST "
        "API: use https://rest.iad-01.braze.com",
        "mappings[0].value: field required",
        "id: must be 1 to 64 characters among letters, digits, '_', '.', '-'",
        "regulations[0]: string should have at least 1 character",
    ]


def test_invalid_connector_id_argument_is_refused() -> None:
    assert problems(braze(), connector_id="no/slash") == [
        "id: must be 1 to 64 characters among letters, digits, '_', '.', '-'"
    ]


# -- the Braze server ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "endpoint"),
    [
        ("https://rest.iad-01.braze.com", "https://rest.iad-01.braze.com"),
        ("https://rest.iad-08.braze.com/", "https://rest.iad-08.braze.com"),
        ("HTTPS://REST.FRA-02.BRAZE.EU", "https://rest.fra-02.braze.eu"),
        ("  https://rest.kr-01.braze.com  ", "https://rest.kr-01.braze.com"),
        ("rest.fra-01.braze.eu", "https://rest.fra-01.braze.eu"),
        ("Rest.Au-01.Braze.com/", "https://rest.au-01.braze.com"),
        ("US-01", "https://rest.iad-01.braze.com"),
        ("us-05", "https://rest.iad-05.braze.com"),
        ("US-08", "https://rest.iad-08.braze.com"),
        ("US-10", "https://rest.us-10.braze.com"),
        ("EU-01", "https://rest.fra-01.braze.eu"),
        ("EU-02", "https://rest.fra-02.braze.eu"),
        ("AU-01", "https://rest.au-01.braze.com"),
        ("ID-01", "https://rest.id-01.braze.com"),
        ("JP-01", "https://rest.jp-01.braze.com"),
        ("KR-01", "https://rest.kr-01.braze.com"),
    ],
)
def test_braze_server_accepted_and_normalised(server: str, endpoint: str) -> None:
    config = parse_config(braze(authentication={"api_key": KEY, "server": server}))

    assert config.options.server == endpoint


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            "https://dashboard-01.braze.com",
            "US-01 dashboard, not the REST API: use https://rest.iad-01.braze.com",
        ),
        (
            "https://dashboard-01.braze.eu/dashboard/home",
            "EU-01 dashboard, not the REST API: use https://rest.fra-01.braze.eu",
        ),
        (
            "dashboard-02.braze.eu",
            "EU-02 dashboard, not the REST API: use https://rest.fra-02.braze.eu",
        ),
        (
            "https://dashboard.us-10.braze.com",
            "US-10 dashboard, not the REST API: use https://rest.us-10.braze.com",
        ),
        (
            "https://dashboard.braze.com",
            "is not the REST API: use the REST endpoint shown next to your API keys",
        ),
        (
            "sdk.fra-01.braze.eu",
            "EU-01 SDK endpoint, not the REST API: use https://rest.fra-01.braze.eu",
        ),
        (
            "https://sdk.iad-03.braze.com",
            "US-03 SDK endpoint, not the REST API: use https://rest.iad-03.braze.com",
        ),
        ("sondheim.braze.com", "sondheim.braze.com is not the REST API"),
        ("https://rest.iad-01.braze.com.", "must not end with a dot"),
        ("https://rest.iad-01.braze.com:443", "must not name a port"),
        ("https://rest.iad-01.braze.com/users/track", "must be the endpoint alone"),
        ("https://rest.iad-01.braze.com?x=1", "must be the endpoint alone"),
        ("https://rest.iad-01.braze.com/#top", "must be the endpoint alone"),
        ("https://x@rest.iad-01.braze.com", "must not contain user info"),
        (
            "https://rest.iad-01.braze.com.evil.example",
            "rest.iad-01.braze.com.evil.example is not a Braze REST endpoint",
        ),
        ("https://rest.iad-10.braze.com", "rest.iad-10.braze.com is not a Braze REST endpoint"),
        ("https://rest.fra-01.braze.com", "rest.fra-01.braze.com is not a Braze REST endpoint"),
        ("rest.iad-01.braze.com.evil.example", "is not a Braze REST endpoint"),
        ("http://rest.iad-01.braze.com", "must use https://"),
        ("ftp://rest.iad-01.braze.com", "must be an https:// URL, not ftp://"),
        ("https://10.0.0.1", "must be a Braze REST endpoint, not an IP address"),
        ("https://[::1]", "must be a Braze REST endpoint, not an IP address"),
        ("https://127.0.0.1:8080", "must not name a port"),
        ("http://127.0.0.1:8080", "unless PREFSYNC_ALLOW_HOSTS lists 127.0.0.1:8080"),
        ("http://rest.iad-01.braze.com", "only a host:port listed in PREFSYNC_ALLOW_HOSTS"),
        ("US-09", "unknown Braze instance 'US-09'"),
        ("rest.iad-01.braze.com/users", "must be a Braze REST endpoint"),
        ("", "is not a Braze REST endpoint"),
    ],
)
def test_braze_server_refused(server: str, message: str) -> None:
    lines = problems(braze(authentication={"api_key": KEY, "server": server}))

    assert len(lines) == 1
    assert lines[0].startswith("authentication.server: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("server", "endpoint"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://LOCALHOST:8443/", "https://localhost:8443"),
    ],
)
def test_allow_hosts_lets_exactly_those_hosts_through(server: str, endpoint: str) -> None:
    raw = braze(authentication={"api_key": KEY, "server": server})
    allow = ("127.0.0.1:8080", "localhost:8443")

    assert parse_config(raw, allow_hosts=allow).options.server == endpoint
    assert problems(raw)  # not without the setting


@pytest.mark.parametrize(
    "server",
    ["http://127.0.0.1:8081", "http://127.0.0.1", "http://127.0.0.1:8080/path", "127.0.0.1:8080"],
)
def test_allow_hosts_lets_nothing_else_through(server: str) -> None:
    raw = braze(authentication={"api_key": KEY, "server": server})

    assert problems(raw, allow_hosts=("127.0.0.1:8080",))


# -- secrets ---------------------------------------------------------------------------


def test_repr_str_and_describe_never_show_the_key() -> None:
    for config in (parse_config(braze()), parse_config(brevo())):
        described = json.dumps(config.describe())

        for text in (repr(config), str(config), repr(config.options), str(config.options)):
            assert KEY not in text
        assert KEY not in described
        assert KEY[-4:] in described
        assert config.describe()["authentication"] == {"api_key": "…cdef"}


def test_to_stored_keeps_the_key_for_the_store_and_round_trips() -> None:
    config = parse_config(braze(regulations=["gdpr"], upsert_mode=True, enabled=False))

    stored = config.to_stored()

    assert stored["authentication"] == {"api_key": KEY}
    assert stored["properties"] == {"server": BRAZE_SERVER}
    assert parse_config(json.loads(json.dumps(stored))) == config


def test_refusal_messages_never_quote_the_key() -> None:
    # The key pasted into the server field, and a key of the wrong type.
    lines = problems(braze(authentication={"api_key": KEY, "server": KEY}))
    lines += problems(braze(authentication={"api_key": [KEY], "server": BRAZE_SERVER}))

    assert lines
    for line in lines:
        assert KEY.lower() not in line.lower()


# -- the registry ----------------------------------------------------------------------


def test_registry_resolves_names_and_aliases() -> None:
    assert set(CONNECTORS) == {"braze", "sendinblue"}
    assert KNOWN_TYPE_IDS == ("braze", "brevo", "sendinblue")
    assert isinstance(get_connector("braze"), BrazeConnector)
    assert get_connector("brevo") is get_connector("sendinblue") is CONNECTORS["sendinblue"]
    assert get_connector("mailchimp") is None


def test_connectors_are_built_with_the_settings_they_are_given() -> None:
    given = connector_settings(Settings(braze_batch_size=7), now=lambda: 1000.0)
    braze_connector = connectors(given)["braze"]
    reset = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1012"}

    assert braze_connector.batch_size == 7
    assert braze_connector.quota(reset).reset_in == 12.0
    assert CONNECTORS["braze"].batch_size == 50
    config = parse_config(braze(), connectors=connectors(given))
    assert config.connector.batch_size == 7
    assert parse_config(braze()).connector is CONNECTORS["braze"]


def test_connectors_default_settings_are_the_prefsync_defaults() -> None:
    defaults = ConnectorSettings()
    for name in ("braze_batch_size", "sendinblue_api_url", "rate_limit_max_wait"):
        assert getattr(defaults, name) == Settings.model_fields[name].default, name


def test_connectors_read_neither_the_settings_nor_the_clock_themselves() -> None:
    for module in sorted((ROOT / "worker" / "connectors").glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module not in ("worker.infra.settings", "worker.core.retries"), (
                    module.name
                )


# -- the store -------------------------------------------------------------------------


@pytest.fixture
def store() -> ConfigStore:
    return ConfigStore(fakeredis.FakeRedis(), SEALER)


def read_all(store: ConfigStore, tenant: str) -> list[ConnectorConfig | None]:
    """The tenant's configs, read as the product reads them: its ids, then each config."""
    return [store.get(tenant, connector_id) for connector_id in store.ids(tenant)]


def test_store_round_trip(store: ConfigStore) -> None:
    config = parse_config(braze(regulations=["gdpr"]))

    store.put("acme", config)

    assert store.get("acme", "braze") == config
    assert store.get("acme", "other") is None
    assert store.get("globex", "braze") is None
    assert read_all(store, "acme") == [config]
    assert store.ids("acme") == ["braze"]


def test_store_keeps_one_hash_per_tenant_of_stored_json(store: ConfigStore) -> None:
    config = parse_config(braze())

    store.put("tenant with spaces:and:colons", config)

    raw = store.redis.hget("prefsync:connectors:tenant with spaces:and:colons", "braze")
    opened = store.sealer.open(raw, "tenant with spaces:and:colons", "braze")
    assert json.loads(opened) == config.to_stored()


def test_store_holds_two_connectors_of_one_type_apart(store: ConfigStore) -> None:
    eu = parse_config(braze(), connector_id="braze-eu")
    us = parse_config(
        braze(authentication={"api_key": "other-key-000000", "server": "US-03"}),
        connector_id="braze-us",
    )
    sib = parse_config(brevo())

    for config in (us, sib, eu):
        store.put("acme", config)

    assert read_all(store, "acme") == [eu, us, sib]
    assert store.ids("acme") == ["braze-eu", "braze-us", "sendinblue"]
    assert store.get("acme", "braze-us").options.server == "https://rest.iad-03.braze.com"


def test_store_put_replaces_the_same_id(store: ConfigStore) -> None:
    store.put("acme", parse_config(braze()))
    replacement = parse_config(braze(enabled=False))

    store.put("acme", replacement)

    assert read_all(store, "acme") == [replacement]


def test_store_delete(store: ConfigStore) -> None:
    store.put("acme", parse_config(braze()))

    assert store.delete("acme", "braze") is True
    assert store.delete("acme", "braze") is False
    assert read_all(store, "acme") == []


def test_store_revalidates_and_names_tenant_and_id_of_a_broken_config(store: ConfigStore) -> None:
    stored = parse_config(braze()).to_stored()
    stored["properties"]["server"] = "https://evil.example"
    sealed = SEALER.seal(json.dumps(stored), "acme", "braze")
    store.redis.hset("prefsync:connectors:acme", "braze", sealed)
    store.redis.hset(
        "prefsync:connectors:acme", "junk", SEALER.seal("\xff not json", "acme", "junk")
    )

    with pytest.raises(InvalidConfig) as broken:
        store.get("acme", "braze")
    with pytest.raises(InvalidConfig) as junk:
        store.get("acme", "junk")

    assert str(broken.value) == (
        "tenant 'acme', connector 'braze': stored config no longer valid: "
        "properties.server: evil.example is not a Braze REST endpoint; use yours, such as "
        "https://rest.iad-01.braze.com or its instance name such as US-01"
    )
    assert str(junk.value) == "tenant 'acme', connector 'junk': the stored config is not JSON"
    with pytest.raises(InvalidConfig):
        read_all(store, "acme")
    assert store.ids("acme") == ["braze", "junk"]


def test_store_reads_with_its_allow_hosts() -> None:
    redis = fakeredis.FakeRedis()
    allow = ("127.0.0.1:8080",)
    local = braze(authentication={"api_key": KEY, "server": "http://127.0.0.1:8080"})
    ConfigStore(redis, SEALER, allow_hosts=allow).put(
        "acme", parse_config(local, allow_hosts=allow)
    )

    assert ConfigStore(redis, SEALER, allow_hosts=allow).get("acme", "braze") is not None
    with pytest.raises(InvalidConfig):
        ConfigStore(redis, SEALER).get("acme", "braze")


def test_connector_config_refuses_options_of_another_connector() -> None:
    braze_config = parse_config(braze())

    with pytest.raises(ValueError, match="options are not sendinblue options"):
        ConnectorConfig(
            id="x",
            type_id="sendinblue",
            mappings=braze_config.mappings,
            options=braze_config.options,
            connector=CONNECTORS["sendinblue"],
        )


# -- configs opened once per stored version ------------------------------------------------


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times the store unsealed ("open") and validated ("parse") a config."""
    calls: Counter[str] = Counter()
    parse, unseal = worker.records.configs.parse_config, Sealer.open

    def counted_parse(*args: Any, **kwargs: Any) -> ConnectorConfig:
        calls["parse"] += 1
        return parse(*args, **kwargs)

    def counted_open(self: Sealer, raw: bytes | str, tenant: str, connector_id: str) -> str:
        calls["open"] += 1
        return unseal(self, raw, tenant, connector_id)

    monkeypatch.setattr(worker.records.configs, "parse_config", counted_parse)
    monkeypatch.setattr(Sealer, "open", counted_open)
    return calls


def test_an_unchanged_config_is_opened_once(store: ConfigStore, opened: Counter[str]) -> None:
    store.put("acme", parse_config(braze()))
    opened.clear()  # put validates what it stores

    first = store.get("acme", "braze")
    again = store.get("acme", "braze")

    assert again is first
    assert opened == {"open": 1, "parse": 1}


def test_a_config_stored_again_is_read_at_once(store: ConfigStore) -> None:
    store.put("acme", parse_config(braze()))
    assert store.get("acme", "braze").enabled is True

    # Stored by another process (the CLI): only the value in Redis tells.
    ConfigStore(store.redis, SEALER).put("acme", parse_config(braze(enabled=False)))

    assert store.get("acme", "braze").enabled is False


def test_the_configs_kept_opened_are_bounded(opened: Counter[str]) -> None:
    store = ConfigStore(fakeredis.FakeRedis(), SEALER, opened=2)
    for connector_id in ("a", "b", "c"):
        store.put("acme", parse_config(braze(), connector_id=connector_id))
        store.get("acme", connector_id)
    opened.clear()

    store.get("acme", "c")
    store.get("acme", "b")
    assert opened == {}
    store.get("acme", "a")  # the least recently read: no longer kept
    assert opened == {"open": 1, "parse": 1}


def test_a_config_that_no_longer_validates_is_refused_at_every_read(
    store: ConfigStore, opened: Counter[str]
) -> None:
    stored = parse_config(braze()).to_stored()
    stored["properties"]["server"] = "https://evil.example"
    store.redis.hset(
        "prefsync:connectors:acme", "braze", SEALER.seal(json.dumps(stored), "acme", "braze")
    )

    for _ in range(2):
        with pytest.raises(InvalidConfig, match="stored config no longer valid"):
            store.get("acme", "braze")
    assert opened == {"open": 2, "parse": 2}
