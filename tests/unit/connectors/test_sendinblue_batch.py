"""Brevo batches (``SendinblueConnector.deliver_many``): contacts named by an email address
go in ``POST /v3/contacts/batch`` calls, every other change on its own; Brevo's
all-or-nothing answers (a 404 naming unknown contacts, a 400 for one bad item) end as the
single-contact calls would, per contact. Brevo is the fake core the e2e tests, the demo and
the benchmark use (tests/fakes/vendors.py), reached without a socket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.e2e.helpers import consent_event
from tests.fakes.vendors import FakeVendors
from tests.unit.conftest import install_runtime, known_values, lock_holder
from worker.connectors import connectors
from worker.connectors.base import (
    BaseTransport,
    Change,
    Delivered,
    HttpRequest,
    HttpResponse,
    Skipped,
    erasure_change,
    standalone_change,
)
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import Deferred, PermanentError, RetryableError
from worker.core.events import parse_event
from worker.core.outcomes import SkipReason
from worker.delivery.runtime import Runtime, connector_settings
from worker.infra.settings import Settings, get_settings
from worker.records.audit import AuditEntry

BASE = "http://brevo.test/v3"
KEY = "xkeysib-TESTKEY-0123456789abcdef"
NEWSLETTER = "consents_purposes_newsletter_enabled"
UNKNOWN = "unknown.invalid"  # the fake's domain of contacts it never knows


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFSYNC_SENDINBLUE_API_URL", BASE)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


class FakeTransport(BaseTransport):
    """Hands every request to the fake vendors, as the fake servers do, and keeps it."""

    def __init__(self, fake: FakeVendors) -> None:
        self.fake = fake
        self.sent: list[HttpRequest] = []

    def send(self, request: HttpRequest) -> HttpResponse:
        self.sent.append(request)
        url = urlsplit(request.url)
        raw = b"" if request.json is None else json.dumps(request.json).encode()
        headers = {name.lower(): value for name, value in request.headers.items()}
        answer, _ = self.fake.handle(
            request.method, url.path, dict(parse_qsl(url.query)), headers, raw
        )
        return HttpResponse(answer.status, answer.headers, answer.body)

    def calls(self) -> list[tuple[str, str]]:
        return [(r.method, r.url.removeprefix(BASE)) for r in self.sent]


@pytest.fixture
def fake() -> FakeVendors:
    # No rate limit: what is tested here is the answers, not the pacing.
    return FakeVendors(brevo_limit=10**9)


@pytest.fixture
def transport(fake: FakeVendors) -> FakeTransport:
    return FakeTransport(fake)


def config(upsert_mode: bool = False, on_user_deleted: str = "ignore") -> ConnectorConfig:
    return parse_config(
        {
            "type_id": "brevo",
            "upsert_mode": upsert_mode,
            "on_user_deleted": on_user_deleted,
            "authentication": {"private_api_key": KEY},
            "mappings": [{"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER}],
        },
        connectors=connectors(connector_settings(get_settings())),
    )


def changes(cfg: ConnectorConfig, *users: str) -> list[Change]:
    return [standalone_change(cfg, user, {NEWSLETTER: False}) for user in users]


def deliver_many(transport: BaseTransport, cfg: ConnectorConfig, *users: str) -> list[Any]:
    return cfg.connector.deliver_many(transport, cfg, changes(cfg, *users))


BLOCKED = {"emailBlacklisted": True}


def test_email_contacts_go_in_one_batch_and_others_alone(transport: FakeTransport) -> None:
    cfg = config()

    answers = deliver_many(transport, cfg, "a@example.com", "u-1", "b@example.com")

    assert answers == [Delivered(204, BLOCKED), Delivered(204, BLOCKED), Delivered(204, BLOCKED)]
    assert transport.calls() == [
        ("POST", "/contacts/batch"),
        ("PUT", "/contacts/u-1?identifierType=ext_id"),
    ]
    assert transport.sent[0].json == {
        "contacts": [
            {"email": "a@example.com", "emailBlacklisted": True},
            {"email": "b@example.com", "emailBlacklisted": True},
        ]
    }
    assert transport.sent[0].headers["api-key"] == KEY


def test_a_contact_alone_is_the_single_contact_update(transport: FakeTransport) -> None:
    cfg = config()

    assert deliver_many(transport, cfg, "a@example.com") == [Delivered(204, BLOCKED)]
    assert transport.calls() == [("PUT", "/contacts/a%40example.com?identifierType=email_id")]


def test_unknown_contacts_are_skipped_and_the_others_sent_again(
    transport: FakeTransport, fake: FakeVendors
) -> None:
    cfg = config(upsert_mode=False)
    users = ["a@example.com", f"b@{UNKNOWN}", "c@example.com", f"d@{UNKNOWN}", "e@example.com"]

    answers = deliver_many(transport, cfg, *users)

    unknown = Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact")
    delivered = Delivered(204, BLOCKED)
    assert answers == [delivered, unknown, delivered, unknown, delivered]
    assert transport.calls() == [("POST", "/contacts/batch")] * 2
    assert [c["email"] for c in transport.sent[1].json["contacts"]] == [
        "a@example.com",
        "c@example.com",
        "e@example.com",
    ]
    assert [c.status for c in fake.calls("brevo")] == [404, 204]
    assert fake.stats()["brevo"]["users"] == 3


def test_unknown_contacts_are_created_one_by_one_in_upsert_mode(
    transport: FakeTransport, fake: FakeVendors
) -> None:
    cfg = config(upsert_mode=True)
    users = [f"a@{UNKNOWN}", "b@example.com", f"c@{UNKNOWN}", "d@example.com"]

    answers = deliver_many(transport, cfg, *users)

    assert answers == [Delivered(201, BLOCKED), Delivered(204, BLOCKED)] * 2
    assert transport.calls() == [
        ("POST", "/contacts/batch"),
        ("POST", "/contacts/batch"),
        ("POST", "/contacts"),
        ("POST", "/contacts"),
    ]
    assert [c.json["email"] for c in transport.sent[2:]] == [f"a@{UNKNOWN}", f"c@{UNKNOWN}"]
    assert transport.sent[2].json["updateEnabled"] is True
    assert fake.brevo_contacts == {f"a@{UNKNOWN}", f"c@{UNKNOWN}"}


def test_an_unsubscribe_erasure_never_creates_the_contact(transport: FakeTransport) -> None:
    cfg = config(upsert_mode=True, on_user_deleted="unsubscribe")
    erasures = [erasure_change(cfg, user) for user in (f"a@{UNKNOWN}", "b@example.com")]

    answers = cfg.connector.deliver_many(transport, cfg, erasures)

    assert answers == [
        Skipped(SkipReason.CONTACT_UNKNOWN, "Brevo has no such contact"),
        Delivered(204, BLOCKED),
    ]
    assert ("POST", "/contacts") not in transport.calls()


def test_a_400_splits_the_call_until_the_contact_at_fault_is_alone(
    transport: FakeTransport, fake: FakeVendors
) -> None:
    cfg = config()
    users = [f"u{n}@example.com" for n in range(8)]
    fake.refuse_brevo_contact("u5@example.com", "Invalid phone number")

    answers = deliver_many(transport, cfg, *users)

    refused = answers[5]
    assert isinstance(refused, PermanentError) and not isinstance(refused, RetryableError)
    assert str(refused) == (
        "Brevo refused the update (HTTP 400): invalid_parameter: Invalid phone number"
    )
    assert answers[:5] + answers[6:] == [Delivered(204, BLOCKED)] * 7
    # [0-7] 400 -> [0-3] 204, [4-7] 400 -> [4 5] 400 -> u4 alone (PUT 204), u5 alone (PUT
    # 400), then [6 7] 204: only u5 is refused, in six calls.
    assert [(c.method, c.status) for c in fake.calls("brevo")] == [
        ("POST", 400),
        ("POST", 204),
        ("POST", 400),
        ("POST", 400),
        ("PUT", 204),
        ("PUT", 400),
        ("POST", 204),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        (404, {"code": "document_not_found", "message": "Contact does not exist"}),
        (404, {"code": "document_not_found", "message": "No contact found for indexes 7"}),
        (207, {"successIds": [11], "failureIds": [12]}),
    ],
    ids=["404 without indexes", "404 naming an index outside the call", "207"],
)
def test_an_answer_naming_no_contact_of_the_call_splits_it(
    transport: FakeTransport, fake: FakeVendors, answer: tuple[int, dict[str, Any]]
) -> None:
    cfg = config()
    fake.fail_next("brevo", 1, status=answer[0], body=answer[1])

    answers = deliver_many(transport, cfg, "a@example.com", "b@example.com")

    # Neither is taken as unknown: each goes again alone, as its single-contact update.
    assert answers == [Delivered(204, BLOCKED)] * 2
    assert transport.calls() == [
        ("POST", "/contacts/batch"),
        ("PUT", "/contacts/a%40example.com?identifierType=email_id"),
        ("PUT", "/contacts/b%40example.com?identifierType=email_id"),
    ]


def test_a_rate_limit_or_outage_ends_the_batch_unsent(
    transport: FakeTransport, fake: FakeVendors
) -> None:
    cfg = config()
    fake.fail_next("brevo", 1, status=429, headers={"x-sib-ratelimit-reset": "3"})

    answers = deliver_many(transport, cfg, "a@example.com", "b@example.com", "u-1")

    assert all(isinstance(a, RetryableError) for a in answers)
    assert answers[0].retry_after == 3.0
    assert transport.calls() == [("POST", "/contacts/batch")]


def test_a_deferral_ends_the_batch_and_leaves_the_rest_unsent(transport: FakeTransport) -> None:
    cfg = config(upsert_mode=True)
    sent: list[str] = []

    class Pacing(BaseTransport):
        def send(self, request: HttpRequest) -> HttpResponse:
            if sent:
                raise Deferred("slot too far", wait=1.0)
            sent.append(request.url)
            return transport.send(request)

    answers = cfg.connector.deliver_many(
        Pacing(), cfg, changes(cfg, f"a@{UNKNOWN}", "b@example.com", "u-1")
    )

    # The 404 named a; b's resend waits its slot, and so do u-1's PUT and a's create.
    assert [type(a) for a in answers] == [Deferred, Deferred, Deferred]
    assert sent == [f"{BASE}/contacts/batch"]


def test_a_refusal_of_the_whole_call_refuses_each_contact(
    transport: FakeTransport, fake: FakeVendors
) -> None:
    cfg = config()
    fake.fail_next("brevo", 1, status=401)

    answers = deliver_many(transport, cfg, "a@example.com", "b@example.com")

    assert all(isinstance(a, PermanentError) and a.operator_action for a in answers)
    assert KEY not in str(answers[0])
    assert transport.calls() == [("POST", "/contacts/batch")]


def test_emails_differing_only_in_case_are_not_in_one_call(transport: FakeTransport) -> None:
    cfg = config()

    answers = deliver_many(transport, cfg, "Jane@example.com", "b@example.com", "jane@EXAMPLE.com")

    assert answers == [Delivered(204, BLOCKED)] * 3
    assert [c["email"] for c in transport.sent[0].json["contacts"]] == [
        "Jane@example.com",
        "b@example.com",
    ]
    assert transport.calls()[1] == ("PUT", "/contacts/jane%40EXAMPLE.com?identifierType=email_id")


def test_an_identifier_that_cannot_name_a_contact_is_never_sent(
    transport: FakeTransport,
) -> None:
    cfg = config()

    refused, delivered, _ = deliver_many(
        transport, cfg, "a\u200b@example.com", "b@example.com", "c@example.com"
    )

    assert isinstance(refused, PermanentError)
    assert "cannot name one contact" in str(refused)
    assert delivered == Delivered(204, BLOCKED)
    assert [c["email"] for c in transport.sent[0].json["contacts"]] == [
        "b@example.com",
        "c@example.com",
    ]


def test_calls_take_at_most_the_batch_size(
    transport: FakeTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFSYNC_BREVO_BATCH_SIZE", "2")
    get_settings.cache_clear()
    cfg = config()

    deliver_many(transport, cfg, *(f"u{n}@example.com" for n in range(5)))

    assert cfg.connector.batch_size == 2
    assert [len(r.json["contacts"]) for r in transport.sent[:2]] == [2, 2]
    assert transport.calls()[2] == ("PUT", "/contacts/u4%40example.com?identifierType=email_id")


def test_deletions_go_one_contact_a_call(transport: FakeTransport) -> None:
    cfg = config(on_user_deleted="delete")
    erasures = [erasure_change(cfg, user) for user in ("a@example.com", "b@example.com")]

    answers = cfg.connector.deliver_erasures(transport, cfg, erasures)

    assert answers == [Delivered(204, {"deleted": True})] * 2
    assert [method for method, _ in transport.calls()] == ["DELETE", "DELETE"]


def test_connectors_check_names_the_mode() -> None:
    assert config().connector.delivery_mode == (
        "contacts named by an email address: batches of up to 100 per POST /v3/contacts/batch "
        "call; others (ext_id): one PUT /v3/contacts/{id} each"
    )


# -- through the deliverer: every per-contact guarantee holds per contact of a batch -------


def event(event_id: str, minute: int, user: str, *, newsletter: bool) -> dict[str, Any]:
    """An event.created of ``user`` at 09:``minute`` setting the newsletter consent."""
    return consent_event(
        event_id, user, f"2026-11-20T09:{minute:02d}:00.000Z", {"newsletter": newsletter}
    )


def runtime_config(rt: Runtime) -> ConnectorConfig:
    """The Brevo connector ``brevo`` of tenant acme, stored, built with ``rt``'s settings."""
    cfg = parse_config(
        {
            "id": "brevo",
            "type_id": "brevo",
            "authentication": {"private_api_key": KEY},
            "mappings": [{"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER}],
        },
        connectors=rt.connectors,
    )
    rt.configs.put("acme", cfg)
    return cfg


def audit(rt: Runtime) -> list[AuditEntry]:
    return rt.audit.query("acme", limit=100)


def test_a_batch_through_the_deliverer_ends_each_event_per_contact(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVendors, transport: FakeTransport
) -> None:
    rt = install_runtime(monkeypatch, Settings(rate_limits={"sendinblue": 1e6}))
    rt.deliverer.transport = transport
    cfg = runtime_config(rt)
    events = [
        event("e1", 1, "a@example.com", newsletter=True),
        event("e2", 2, f"c@{UNKNOWN}", newsletter=False),
        event("e3", 3, "b@example.com", newsletter=True),
        event("e4", 4, "a@example.com", newsletter=False),  # newer: a is told False
    ]

    assert rt.deliverer.deliver("acme", [parse_event(e) for e in events], cfg) == {}

    assert [c.status for c in fake.calls("brevo")] == [404, 204]
    assert fake.calls("brevo")[1].body == {
        "contacts": [
            {"email": "a@example.com", "emailBlacklisted": True},
            {"email": "b@example.com", "emailBlacklisted": False},
        ]
    }
    ended = {e.event_key.split(":")[1]: (e.outcome, e.reason) for e in audit(rt)}
    assert ended == {
        "e1": ("skipped", "stale"),
        "e2": ("skipped", "contact_unknown"),
        "e3": ("delivered", ""),
        "e4": ("delivered", ""),
    }

    # Each event ended per person: delivered again, nothing is sent.
    assert rt.deliverer.deliver("acme", [parse_event(e) for e in events], cfg) == {}
    assert len(fake.calls("brevo")) == 2


def test_contacts_that_go_alone_are_claimed_one_call_at_a_time(
    monkeypatch: pytest.MonkeyPatch, fake: FakeVendors, transport: FakeTransport
) -> None:
    # One call per second and no sleeping: after the batch, the first ext_id contact's call
    # has to wait, so it is deferred, and the next is deferred without being claimed
    # (locked and merged), as one call's worth of users at a time are.
    rt = install_runtime(monkeypatch, Settings(rate_limits={"sendinblue": 1.0}))
    rt.deliverer.transport = transport
    rt.deliverer.max_sleep = 0.0
    cfg = runtime_config(rt)
    users = ["crm-1", "a@example.com", "crm-2", "b@example.com"]
    events = [event(f"e{n}", 1, user, newsletter=False) for n, user in enumerate(users)]

    unfinished = rt.deliverer.deliver("acme", [parse_event(e) for e in events], cfg)

    assert sorted(unfinished) == [0, 2]
    assert all(isinstance(why, Deferred) for why in unfinished.values())
    assert transport.calls() == [("POST", "/contacts/batch")]
    assert known_values(rt.state, "acme", "crm-2") == {}
    assert lock_holder(rt.state, "acme", "brevo", "crm-1") is None
    assert known_values(rt.state, "acme", "a@example.com") == {NEWSLETTER: False}
