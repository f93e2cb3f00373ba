"""The fake PMP and Brevo's webhooks (tests/fakes), served on a local port, met by
prefsync's own PMP client: tokens renewed after they expire, consent events created once
and merged into users, users read page by page; Brevo webhooks listed and created."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import requests

from tests.fakes.destinations import FakeDestinations
from worker.connectors.base import Transport
from worker.connectors.pmp import ConsentEvent, PmpClient, Purpose, parse_credentials
from worker.core.errors import PermanentError, RetryableError

BREVO_AUTH = {"api-key": "test-key"}


@pytest.fixture
def fake() -> Iterator[FakeDestinations]:
    fake = FakeDestinations(pmp_page_size=2).start()
    yield fake
    fake.stop()


def credentials(fake: FakeDestinations):
    raw = {"api_key": "k" * 16, "api_secret": "s" * 16, "api_url": f"{fake.url}/pmp/v1"}
    return parse_credentials(raw, tenant="acme", allow_hosts=(fake.host_port,))


def refusal(event_id: str, user: str = "jane") -> ConsentEvent:
    return ConsentEvent(
        id=event_id,
        created_at=datetime(2026, 12, 7, 10, tzinfo=UTC),
        user_id=user,
        regulation="gdpr",
        purposes=(Purpose(id="newsletter", enabled=False),),
        metadata={"connector": "brevo-main", "signal": "unsubscribed"},
    )


def test_consent_events_are_created_once_and_merged_into_the_user(fake) -> None:
    pmp, creds = PmpClient(Transport(5.0)), credentials(fake)
    assert pmp.write_events(creds, [refusal("ev-1")]) == 201
    assert pmp.write_events(creds, [refusal("ev-1")]) == 409  # a retry: already there
    [event] = fake.pmp_events
    assert event["delegate"]["id"] == "prefsync"
    user = pmp.user(creds, "jane")
    assert user["consents"]["purposes"] == [{"id": "newsletter", "enabled": False}]
    assert user["updated_at"] == "2026-12-07T10:00:00.000Z"


def test_an_expired_token_is_renewed(fake) -> None:
    pmp, creds = PmpClient(Transport(5.0)), credentials(fake)
    pmp.write_events(creds, [refusal("ev-1")])
    fake.expire_pmp_tokens()
    assert pmp.write_events(creds, [refusal("ev-2")]) == 201
    sessions = [c for c in fake.calls("pmp") if c.path.endswith("/sessions")]
    assert len(sessions) == 2 and len(fake.pmp_events) == 2


def test_users_come_in_cursor_pages(fake) -> None:
    for user in ("u1", "u2", "u3", "u4", "u5"):
        fake.add_pmp_user({"organization_user_id": user, "consents": {"purposes": []}})
    pmp, creds = PmpClient(Transport(5.0)), credentials(fake)
    assert [u["organization_user_id"] for u in pmp.users(creds)] == ["u1", "u2", "u3", "u4", "u5"]
    pages = [c for c in fake.calls("pmp") if c.path.endswith("/consents/users")]
    assert len(pages) == 3


def test_scripted_failures_and_refusals(fake) -> None:
    pmp, creds = PmpClient(Transport(5.0)), credentials(fake)
    pmp.write_events(creds, [refusal("ev-0")])  # a token first
    fake.fail_next("pmp", 1, status=503)
    with pytest.raises(RetryableError):
        pmp.write_events(creds, [refusal("ev-1")])
    assert pmp.write_events(creds, [refusal("ev-1")]) == 201
    fake.fail_next("pmp", 1, status=400)
    with pytest.raises(PermanentError, match="HTTP 400"):
        pmp.write_events(creds, [refusal("ev-2")])


def test_brevo_webhooks_are_created_and_listed(fake) -> None:
    hook = {
        "url": "https://id:secret@prefsync.example/signals/brevo-main",
        "events": ["unsubscribed", "spam"],
        "type": "marketing",
        "description": "prefsync",
    }
    created = requests.post(f"{fake.url}/v3/webhooks", json=hook, headers=BREVO_AUTH)
    assert created.status_code == 201 and created.json() == {"id": 1}
    listed = requests.get(f"{fake.url}/v3/webhooks?type=marketing", headers=BREVO_AUTH).json()
    assert [(h["id"], h["url"], h["events"]) for h in listed["webhooks"]] == [
        (1, hook["url"], hook["events"])
    ]
    other = requests.get(f"{fake.url}/v3/webhooks?type=transactional", headers=BREVO_AUTH)
    assert other.json() == {"webhooks": []}
    assert requests.get(f"{fake.url}/v3/webhooks").status_code == 401
    control = requests.get(f"{fake.url}/_fake/brevo_webhooks").json()
    assert len(control["webhooks"]) == 1


def test_brevo_reads_a_contact_by_email_with_its_ext_id(fake) -> None:
    fake.add_brevo_contact("jane@example.com", ext_id="u-9")
    url = f"{fake.url}/v3/contacts/jane%40example.com?identifierType=email_id"
    contact = requests.get(url, headers=BREVO_AUTH)
    assert contact.status_code == 200 and contact.json()["attributes"] == {"EXT_ID": "u-9"}
    unknown = requests.get(f"{fake.url}/v3/contacts/bob%40example.com", headers=BREVO_AUTH)
    assert unknown.status_code == 404 and unknown.json()["code"] == "document_not_found"
