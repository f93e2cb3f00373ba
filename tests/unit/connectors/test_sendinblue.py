"""Brevo (Sendinblue): every mapping row of docs/mappings.md becomes the exact contact
request, contacts are addressed by the identifier rules, and every kind of answer gives the
right result or error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from worker.connectors import connectors, get_connector
from worker.connectors.base import Delivered, Skipped, Transport, standalone_change
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.connectors.sendinblue import SendinblueConnector
from worker.core.errors import PermanentError, RetryableError
from worker.core.outcomes import SkipReason
from worker.delivery.runtime import connector_settings
from worker.infra.settings import get_settings

KEY = "xkeysib-TESTKEY-0123456789abcdef"
BASE = "https://api.test-brevo.example/v3"
USER = "u-123"
UPDATE = f"{BASE}/contacts/{USER}?identifierType=ext_id"
CREATE = f"{BASE}/contacts"
NOT_FOUND = {"code": "document_not_found", "message": "Contact does not exist"}


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # A trailing slash in the setting must not double the one before "contacts".
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", f"{BASE}/")
    monkeypatch.setenv("PREFSYNC_RATE_LIMIT_MAX_WAIT", "30")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def prop(mapping_id: str) -> str:
    """The property the test configs map ``mapping_id`` from."""
    return f"consents_purposes_{mapping_id}_enabled"


def config(
    *mapping_ids: str, upsert_mode: bool = False, list_id: int | None = None
) -> ConnectorConfig:
    return parse_config(
        {
            "type_id": "brevo",
            "upsert_mode": upsert_mode,
            "authentication": {"private_api_key": KEY},
            "properties": {} if list_id is None else {"list_id": list_id},
            "mappings": [
                {"id": mapping_id, "value": prop(mapping_id)} for mapping_id in mapping_ids
            ],
        },
        connectors=connectors(connector_settings(get_settings())),
    )


def deliver(cfg: ConnectorConfig, values: dict[str, Any], user: str = USER) -> Any:
    return cfg.connector.deliver(Transport(timeout=5), cfg, standalone_change(cfg, user, values))


def sent(mocked: responses.RequestsMock, index: int = 0) -> Any:
    body = mocked.calls[index].request.body
    return json.loads(body)


# -- mappings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping_id", "value", "body"),
    [
        ("EMAIL_CAMPAIGNS_SUBSCRIBED", True, {"emailBlacklisted": False}),
        ("EMAIL_CAMPAIGNS_SUBSCRIBED", False, {"emailBlacklisted": True}),
        ("email_campaigns_subscribed", False, {"emailBlacklisted": True}),
        ("EMAIL_NOTIFICATION", True, {"attributes": {"EMAIL_NOTIFICATION": True}}),
        ("email_notification", False, {"attributes": {"EMAIL_NOTIFICATION": False}}),
        ("Frequency", "weekly,daily", {"attributes": {"FREQUENCY": "weekly,daily"}}),
    ],
)
def test_mapping_row_becomes_the_update(
    mocked: responses.RequestsMock, mapping_id: str, value: Any, body: dict[str, Any]
) -> None:
    mocked.put(UPDATE, status=204)

    result = deliver(config(mapping_id), {prop(mapping_id): value})

    assert sent(mocked) == body
    assert result == Delivered(204, body)


def test_full_example_request(mocked: responses.RequestsMock) -> None:
    mocked.put(UPDATE, status=204)
    cfg = config("EMAIL_CAMPAIGNS_SUBSCRIBED", "EMAIL_NOTIFICATION", "SMS_OK")
    values = {prop("EMAIL_CAMPAIGNS_SUBSCRIBED"): True, prop("EMAIL_NOTIFICATION"): True}

    deliver(cfg, values)

    request = mocked.calls[0].request
    assert request.method == "PUT"
    assert request.url == f"{BASE}/contacts/u-123?identifierType=ext_id"
    assert request.headers["api-key"] == KEY
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Accept"] == "application/json"
    assert sent(mocked) == {"attributes": {"EMAIL_NOTIFICATION": True}, "emailBlacklisted": False}


def test_nothing_mapped_sends_nothing_and_skips(mocked: responses.RequestsMock) -> None:
    cfg = config("EMAIL_NOTIFICATION", upsert_mode=True)

    assert cfg.connector.requests(cfg, standalone_change(cfg, USER, {})) == []
    assert deliver(cfg, {"unrelated": True}) == Skipped(
        SkipReason.NO_MAPPED_VALUES, "no mapping has a value"
    )
    assert len(mocked.calls) == 0


def test_text_for_the_blocklist_is_a_config_error(mocked: responses.RequestsMock) -> None:
    with pytest.raises(PermanentError, match="needs a true/false property") as caught:
        deliver(config("EMAIL_CAMPAIGNS_SUBSCRIBED"), {prop("EMAIL_CAMPAIGNS_SUBSCRIBED"): "yes"})

    assert caught.value.operator_action
    assert len(mocked.calls) == 0


# -- identifiers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "path", "identifier_type"),
    [
        ("u-123", "u-123", "ext_id"),
        ("jane@example.com", "jane%40example.com", "email_id"),
        ("a+b@x.com", "a%2Bb%40x.com", "email_id"),
        ("crm/42", "crm%2F42", "ext_id"),
        ("42 ?&=#", "42%20%3F%26%3D%23", "ext_id"),
        ("not@an-email", "not%40an-email", "ext_id"),
        ("two@@x.com", "two%40%40x.com", "ext_id"),
        ("José@exämple.fr", "Jos%C3%A9%40ex%C3%A4mple.fr", "email_id"),
    ],
)
def test_contact_is_addressed_by_identifier_rules(
    mocked: responses.RequestsMock, user: str, path: str, identifier_type: str
) -> None:
    url = f"{BASE}/contacts/{path}?identifierType={identifier_type}"
    mocked.put(url, status=204)

    deliver(config("EMAIL_NOTIFICATION"), {prop("EMAIL_NOTIFICATION"): True}, user=user)

    assert mocked.calls[0].request.url == url


# -- unknown contacts and upsert -------------------------------------------------------


def test_unknown_contact_without_upsert_is_skipped(mocked: responses.RequestsMock) -> None:
    mocked.put(UPDATE, status=404, json=NOT_FOUND)

    result = deliver(config("EMAIL_NOTIFICATION"), {prop("EMAIL_NOTIFICATION"): True})

    assert result == Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact")
    assert len(mocked.calls) == 1


@pytest.mark.parametrize("created_status", [201, 204])
def test_unknown_contact_with_upsert_is_created(
    mocked: responses.RequestsMock, created_status: int
) -> None:
    mocked.put(UPDATE, status=404, json=NOT_FOUND)
    mocked.post(CREATE, status=created_status, json={"id": 7} if created_status == 201 else None)
    values = {prop("EMAIL_CAMPAIGNS_SUBSCRIBED"): False, prop("EMAIL_NOTIFICATION"): True}

    result = deliver(
        config("EMAIL_CAMPAIGNS_SUBSCRIBED", "EMAIL_NOTIFICATION", upsert_mode=True, list_id=12),
        values,
    )

    create = mocked.calls[1].request
    assert (create.method, create.url) == ("POST", CREATE)
    assert create.headers["api-key"] == KEY
    assert sent(mocked, 1) == {
        "ext_id": USER,
        "attributes": {"EMAIL_NOTIFICATION": True},
        "emailBlacklisted": True,
        "listIds": [12],
        "updateEnabled": True,
    }
    assert result == Delivered(
        created_status, {"attributes": {"EMAIL_NOTIFICATION": True}, "emailBlacklisted": True}
    )


def test_created_contact_with_an_email_and_no_list(mocked: responses.RequestsMock) -> None:
    mocked.put(f"{BASE}/contacts/a%2Bb%40x.com?identifierType=email_id", status=404, json=NOT_FOUND)
    mocked.post(CREATE, status=201, json={"id": 8})

    deliver(
        config("EMAIL_CAMPAIGNS_SUBSCRIBED", upsert_mode=True),
        {prop("EMAIL_CAMPAIGNS_SUBSCRIBED"): True},
        user="a+b@x.com",
    )

    assert sent(mocked, 1) == {
        "email": "a+b@x.com",
        "emailBlacklisted": False,
        "updateEnabled": True,
    }


def test_known_contact_with_upsert_is_only_updated(mocked: responses.RequestsMock) -> None:
    mocked.put(UPDATE, status=204)

    assert isinstance(deliver(config("X", upsert_mode=True), {prop("X"): "v"}), Delivered)
    assert len(mocked.calls) == 1


def test_requests_preview_lists_the_create_only_with_upsert() -> None:
    without = config("EMAIL_NOTIFICATION")
    with_upsert = config("EMAIL_NOTIFICATION", upsert_mode=True, list_id=3)
    values = {prop("EMAIL_NOTIFICATION"): True}

    (update,) = without.connector.requests(without, standalone_change(without, USER, values))
    update_again, create = with_upsert.connector.requests(
        with_upsert, standalone_change(with_upsert, USER, values)
    )

    assert (update.method, update.url, update.json) == (
        "PUT",
        UPDATE,
        {"attributes": {"EMAIL_NOTIFICATION": True}},
    )
    assert update_again == update
    assert (create.method, create.url) == ("POST", CREATE)
    assert create.json == {
        "ext_id": USER,
        "attributes": {"EMAIL_NOTIFICATION": True},
        "listIds": [3],
        "updateEnabled": True,
    }
    assert create.redacted()["headers"]["api-key"] == "…cdef"


def test_404_that_is_not_brevos_no_such_contact_is_an_operator_error(
    mocked: responses.RequestsMock,
) -> None:
    # A wrong base URL must not silently skip every change as "contact unknown".
    mocked.put(UPDATE, status=404, body="<html>Not Found</html>")

    with pytest.raises(PermanentError, match="HTTP 404") as caught:
        deliver(config("EMAIL_NOTIFICATION", upsert_mode=True), {prop("EMAIL_NOTIFICATION"): True})

    assert caught.value.operator_action
    assert len(mocked.calls) == 1


def test_failed_create_is_classified(mocked: responses.RequestsMock) -> None:
    mocked.put(UPDATE, status=404, json=NOT_FOUND)
    mocked.post(
        CREATE, status=400, json={"code": "invalid_parameter", "message": "Invalid list id"}
    )

    with pytest.raises(PermanentError, match="invalid_parameter: Invalid list id"):
        deliver(config("X", upsert_mode=True, list_id=99), {prop("X"): True})


# -- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "operator_action"),
    [
        (200, {"ok": True}, RetryableError, None),
        (202, None, RetryableError, None),
        (301, None, PermanentError, True),
        (307, None, PermanentError, True),
        (
            400,
            {"code": "invalid_parameter", "message": "attributes should be an object"},
            PermanentError,
            False,
        ),
        (
            400,
            {"code": "missing_parameter", "message": "identifier is missing"},
            PermanentError,
            False,
        ),
        (401, {"code": "unauthorized", "message": "Key not found"}, PermanentError, True),
        (402, {"code": "not_enough_credits", "message": "No credit"}, PermanentError, True),
        (403, {"code": "permission_denied", "message": "Not allowed"}, PermanentError, True),
        (408, None, RetryableError, None),
        (409, {"code": "duplicate_parameter", "message": "duplicate"}, PermanentError, False),
        (
            425,
            {"code": "account_in_process", "message": "Account under validation"},
            RetryableError,
            None,
        ),
        (429, {"code": "too_many_requests", "message": "slow down"}, RetryableError, None),
        (500, {"code": "internal_error", "message": "boom"}, RetryableError, None),
        (503, "Service Unavailable", RetryableError, None),
    ],
)
def test_answer_classification(
    mocked: responses.RequestsMock,
    status: int,
    body: Any,
    error: type[Exception],
    operator_action: bool | None,
) -> None:
    if isinstance(body, str):
        mocked.put(UPDATE, status=status, body=body)
    elif body is None:
        mocked.put(UPDATE, status=status)
    else:
        mocked.put(UPDATE, status=status, json=body)

    with pytest.raises(error) as caught:
        deliver(config("X", upsert_mode=True), {prop("X"): True})

    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    if operator_action is not None:
        assert caught.value.operator_action is operator_action
    assert len(mocked.calls) == 1  # only a 404 document_not_found leads to a create


def test_400_carries_brevos_code_and_message(mocked: responses.RequestsMock) -> None:
    mocked.put(
        UPDATE, status=400, json={"code": "invalid_parameter", "message": "Invalid attribute"}
    )

    with pytest.raises(PermanentError) as caught:
        deliver(config("X"), {prop("X"): True})

    assert (
        str(caught.value)
        == "Brevo refused the update (HTTP 400): invalid_parameter: Invalid attribute"
    )


@pytest.mark.parametrize(
    ("status", "says"),
    [
        (401, "the API key is wrong or revoked"),
        (402, "the account has no credit left"),
        (403, "the API key is not permitted to update contacts"),
    ],
)
def test_operator_errors_say_what_to_fix_without_the_key(
    mocked: responses.RequestsMock, status: int, says: str
) -> None:
    mocked.put(UPDATE, status=status, json={"code": "unauthorized", "message": f"bad key {KEY}"})

    with pytest.raises(PermanentError) as caught:
        deliver(config("X"), {prop("X"): True})

    assert says in str(caught.value)
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-sib-ratelimit-reset": "7"}, 7.0),
        ({"X-Sib-RateLimit-Reset": "0.5"}, 0.5),
        ({"x-sib-ratelimit-reset": "45"}, 30.0),  # capped by rate_limit_max_wait
        ({"x-sib-ratelimit-reset": "3600"}, 30.0),  # an hour window: still seconds, capped
        ({"x-sib-ratelimit-reset": "8000"}, 8.0),  # beyond an hour: milliseconds
        ({"x-sib-ratelimit-reset": "-3"}, 0.0),
        ({"x-sib-ratelimit-reset": "later"}, None),
        ({"x-sib-ratelimit-reset": "inf"}, None),
        ({}, None),
    ],
)
def test_429_waits_for_the_reset_within_the_cap(
    mocked: responses.RequestsMock, headers: dict[str, str], expected: float | None
) -> None:
    mocked.put(
        UPDATE, status=429, headers=headers, json={"code": "too_many_requests", "message": "x"}
    )

    with pytest.raises(RetryableError) as caught:
        deliver(config("X"), {prop("X"): True})

    assert caught.value.retry_after == expected


def test_network_error_is_retried(mocked: responses.RequestsMock) -> None:
    mocked.put(UPDATE, body=requests.ConnectionError("refused"))

    with pytest.raises(RetryableError, match="network error"):
        deliver(config("X"), {prop("X"): True})


# -- who a webhook's email is -----------------------------------------------------------

READ = f"{BASE}/contacts/jane%40example.com?identifierType=email_id"


def ext_id(cfg: ConnectorConfig) -> str | None:
    connector = cfg.connector
    assert isinstance(connector, SendinblueConnector)
    return connector.contact_ext_id(Transport(timeout=5), cfg, "jane@example.com")


@pytest.mark.parametrize(
    ("body", "found"),
    [
        ({"email": "jane@example.com", "ext_id": "u-9", "attributes": {}}, "u-9"),
        ({"email": "jane@example.com", "attributes": {"EXT_ID": "u-8"}}, "u-8"),
        ({"email": "jane@example.com", "attributes": {"EXT_ID": 42}}, "42"),
        ({"email": "jane@example.com", "attributes": {}}, None),
    ],
)
def test_a_contacts_ext_id_names_the_person(
    mocked: responses.RequestsMock, body: dict[str, Any], found: str | None
) -> None:
    mocked.get(READ, json=body)
    assert ext_id(config("EMAIL_CAMPAIGNS_SUBSCRIBED")) == found
    assert mocked.calls[0].request.headers["api-key"] == KEY


def test_an_unknown_contact_names_nobody_and_failures_are_a_deliverys(
    mocked: responses.RequestsMock,
) -> None:
    cfg = config("EMAIL_CAMPAIGNS_SUBSCRIBED")
    mocked.get(READ, json=NOT_FOUND, status=404)
    assert ext_id(cfg) is None
    mocked.replace(responses.GET, READ, json={"message": "down"}, status=503)
    with pytest.raises(RetryableError):
        ext_id(cfg)
    mocked.replace(responses.GET, READ, json={"code": "unauthorized", "message": "no"}, status=401)
    with pytest.raises(PermanentError):
        ext_id(cfg)


def test_brevo_compares_email_addresses_without_letter_case_and_ext_ids_exactly() -> None:
    brevo, braze = get_connector("sendinblue"), get_connector("braze")
    assert brevo is not None and braze is not None
    assert brevo.folded_id("Case.Test@Example.com") == "case.test@example.com"
    assert brevo.folded_id("case.test@example.com") == "case.test@example.com"
    assert brevo.folded_id("Customer-42") is None  # an ext_id
    assert braze.folded_id("Case.Test@Example.com") is None  # external_ids are case-sensitive
