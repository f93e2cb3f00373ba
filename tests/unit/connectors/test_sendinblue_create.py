"""A Brevo create (upsert mode) is sent only with an email Brevo accepts as one
(docs/mappings.md#brevo-sendinblue): otherwise the change ends as a dead letter naming why,
and the create is never sent."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
import responses

from worker.connectors import connectors
from worker.connectors.base import Delivered, Transport, standalone_change
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.connectors.sendinblue import create_problem
from worker.core.errors import PermanentError
from worker.delivery.runtime import connector_settings
from worker.infra.settings import get_settings

KEY = "xkeysib-TESTKEY-0123456789abcdef"
BASE = "https://api.test-brevo.example/v3"
PROPERTY = "consents_purposes_newsletter_enabled"
NOT_FOUND = {"code": "document_not_found", "message": "Contact does not exist"}
REFUSED_BY_BREVO = [
    "jane@exa_mple.com",
    "jane..doe@example.com",
    ".jane@example.com",
    "jane.@example.com",
    "jane@-example.com",
    "jane@example.com.",
    "jane@example..com",
    "jane@exämple.com",
]
TAKEN_BY_BREVO = ["jane.doe@example.com", "a+b@x.com", "O'Brien@Example.CO.UK", "j_d@x-y.io"]


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BASE)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def upserting() -> ConnectorConfig:
    return parse_config(
        {
            "type_id": "brevo",
            "upsert_mode": True,
            "config": {
                "api_key": KEY,
                "properties": [{"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": PROPERTY}],
            },
        },
        connectors=connectors(connector_settings(get_settings())),
    )


@pytest.mark.parametrize("user", REFUSED_BY_BREVO)
def test_an_email_brevo_refuses_is_never_sent_in_a_create(
    mocked: responses.RequestsMock, user: str
) -> None:
    cfg = upserting()
    update = f"{BASE}/contacts/{quote(user, safe='')}"
    mocked.put(update, status=404, json=NOT_FOUND)

    with pytest.raises(PermanentError) as refused:
        cfg.connector.deliver(
            Transport(timeout=5), cfg, standalone_change(cfg, user, {PROPERTY: False})
        )

    assert [call.request.method for call in mocked.calls] == ["PUT"]
    assert str(refused.value).startswith("not created in Brevo: ")
    assert "not an email by the rule of Brevo's API" in str(refused.value)
    assert user not in str(refused.value)


@pytest.mark.parametrize("user", REFUSED_BY_BREVO)
def test_the_preview_shows_the_update_without_the_create(user: str) -> None:
    cfg = upserting()

    (update,) = cfg.connector.requests(cfg, standalone_change(cfg, user, {PROPERTY: True}))

    assert update.method == "PUT"


@pytest.mark.parametrize("user", REFUSED_BY_BREVO)
def test_a_known_contact_is_still_updated(mocked: responses.RequestsMock, user: str) -> None:
    cfg = upserting()
    mocked.put(f"{BASE}/contacts/{quote(user, safe='')}", status=204)

    result = cfg.connector.deliver(
        Transport(timeout=5), cfg, standalone_change(cfg, user, {PROPERTY: False})
    )

    assert result == Delivered(204, {"emailBlacklisted": True})


@pytest.mark.parametrize("user", TAKEN_BY_BREVO)
def test_an_email_brevo_takes_is_created(mocked: responses.RequestsMock, user: str) -> None:
    cfg = upserting()
    mocked.put(
        f"{BASE}/contacts/{quote(user, safe='')}",
        status=404,
        json=NOT_FOUND,
    )
    mocked.post(f"{BASE}/contacts", status=201, json={"id": 1})

    cfg.connector.deliver(Transport(timeout=5), cfg, standalone_change(cfg, user, {PROPERTY: True}))

    assert create_problem(user) is None
    assert [call.request.method for call in mocked.calls] == ["PUT", "POST"]


def test_an_identifier_addressed_as_ext_id_is_not_held_to_the_email_rule() -> None:
    assert create_problem("crm_42") is None
    assert create_problem("jane@localhost") is None
