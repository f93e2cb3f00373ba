"""Redaction of credentials in log lines (worker.infra.logging.redact)."""

from __future__ import annotations

import pytest

from worker.infra.logging import redact

SECRET = "s3cr3t-V4lue"


@pytest.mark.parametrize(
    "text",
    [
        "brevo said no to xkeysib-0123abcd-XYZ",
        f"headers: Authorization: Bearer {SECRET}",
        f"BEARER {SECRET} refused",
        f"api_key={SECRET}",
        f"API-KEY: {SECRET}",
        f"{{'apikey': '{SECRET}'}}",
        f'{{"private_api_key": "{SECRET}"}}',
        f"AUTHORIZATION={SECRET}",
    ],
)
def test_every_form_of_a_credential_is_redacted_whatever_its_case(text: str) -> None:
    redacted = redact(text)
    assert "[REDACTED]" in redacted
    assert SECRET not in redacted
    assert "xkeysib-0123" not in redacted


@pytest.mark.parametrize(
    "text", ["delivered", "event.created:e-1:2026-11-20T09:00:00Z", "monkey business", ""]
)
def test_text_without_a_credential_is_left_as_it_is(text: str) -> None:
    assert redact(text) == text


class _Hasher:
    def user(self, user_id: str) -> str:
        return f"h({user_id})"

    def of(self, *parts: str) -> str:
        return f"h{parts}"


def test_user_ids_hashed_omitted_or_left_out_when_no_key_can_be_read(monkeypatch):
    from worker.infra import logging as prefsync_logging

    hide = prefsync_logging._user_ids("hash")
    monkeypatch.setattr(prefsync_logging, "_pseudonyms", lambda: _Hasher())
    line = hide(None, "info", {"user": "jane@x.eu", "event_key": "user.updated:pmp-1:t"})
    assert line == {
        "user": "h(jane@x.eu)",
        "event_key": "user.updated:h('event', 'user.updated:pmp-1:t')",
    }
    consent = hide(None, "info", {"user": "jane@x.eu", "event_key": "event.created:ev-1:t"})
    assert consent["event_key"] == "event.created:ev-1:t"  # a consent event's id names no one

    def unreadable():
        raise ConnectionError("Redis is away")

    monkeypatch.setattr(prefsync_logging, "_pseudonyms", unreadable)
    assert hide(None, "info", {"user": "jane@x.eu", "x": 1}) == {"x": 1}
    omit = prefsync_logging._user_ids("omit")
    assert omit(None, "info", {"user": "jane@x.eu", "event_key": "user.deleted:p:t"}) == {
        "event_key": "user.deleted"
    }
