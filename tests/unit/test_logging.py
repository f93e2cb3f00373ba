"""Redaction of credentials in log lines (worker.logging.redact)."""

from __future__ import annotations

import pytest

from worker.logging import redact

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
