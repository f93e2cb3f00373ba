"""The inverse mapping through a connector's own mappings, and the consent event a
refusal writes: the right purposes refused, a deterministic id, prefsync as delegate."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from worker.connectors.config import parse_config
from worker.connectors.refusals import consent_event, purpose_of, refused_values
from worker.core.signals import read_signals

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
GROUP = "6f1c3a2e-1b0d-4c5e-9a8f-7e6d5c4b3a21"
NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def braze():
    return parse_config(
        {
            "type_id": "braze",
            "authentication": {"api_key": "braze-key-0123456789", "server": "US-01"},
            "mappings": [
                {"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"},
                {"id": "UNSUBSCRIBED", "value": "consents_purposes_email_optout_enabled"},
                {"id": "PUSH_OPTED_IN", "value": "consents_purposes_push_enabled"},
                {"id": GROUP.upper(), "value": "consents_purposes_product_updates_enabled"},
                {"id": "favourite", "value": "consents_purposes_newsletter_values_topic_value"},
            ],
        }
    )


def brevo():
    raw = json.loads((EXAMPLES / "connectors" / "sendinblue-bidirectional.json").read_text())
    return parse_config(raw)


def test_every_property_feeding_the_field_gets_its_refusing_value() -> None:
    assert refused_values(braze(), "email_subscribe") == {
        "consents_purposes_newsletter_enabled": False,
        "consents_purposes_email_optout_enabled": True,
    }
    assert refused_values(braze(), "push_subscribe") == {"consents_purposes_push_enabled": False}
    assert refused_values(braze(), GROUP) == {"consents_purposes_product_updates_enabled": False}
    assert refused_values(brevo(), "emailBlacklisted") == {
        "consents_purposes_newsletter_enabled": False
    }


def test_a_field_no_mapping_feeds_writes_nothing() -> None:
    assert refused_values(brevo(), "smsBlacklisted") == {}
    assert refused_values(braze(), "favourite") == {}  # a custom attribute is no refusal


def test_purpose_ids() -> None:
    assert purpose_of("consents_purposes_newsletter_enabled") == "newsletter"
    assert purpose_of("consents__purposes__news_letter__enabled") == "news_letter"
    assert purpose_of("consents_purposes_newsletter_enabled_li") is None
    assert purpose_of("consents_channels_email_enabled") is None
    assert purpose_of("consents_purposes_p_preferences_f_values_v_enabled") is None


def test_the_consent_event_of_a_brevo_unsubscribe() -> None:
    body = json.loads((EXAMPLES / "signals" / "brevo-unsubscribed.json").read_text())
    [signal] = read_signals("sendinblue", "brevo-main", body, NOW).signals
    values = refused_values(brevo(), signal.field)
    event = consent_event("acme", signal, "jane", values, "gdpr")
    assert event is not None
    body = event.body()
    assert body["user"] == {"organization_user_id": "jane"}
    assert body["consents"]["purposes"] == [{"id": "newsletter", "enabled": False}]
    assert body["delegate"] == {
        "id": "prefsync",
        "name": "prefsync",
        "metadata": {"connector": "brevo-main", "signal": "unsubscribed"},
    }
    assert event.created_at == signal.at
    again = consent_event("acme", signal, "jane", values, "gdpr")
    assert again is not None and again.id == event.id  # a retry names the same event
    other = consent_event("globex", signal, "jane", values, "gdpr")
    assert other is not None and other.id != event.id


def test_no_purpose_behind_the_field_no_event() -> None:
    body = json.loads((EXAMPLES / "signals" / "brevo-unsubscribed.json").read_text())
    [signal] = read_signals("sendinblue", "brevo-main", body, NOW).signals
    values = {"consents_channels_email_enabled": False}
    assert consent_event("acme", signal, "jane", values, "gdpr") is None
