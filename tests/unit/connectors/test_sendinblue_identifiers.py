"""A Brevo contact identifier that cannot name one contact is never sent: the change is
refused for the connector (a dead letter), never turned into a request on another path;
every other identifier is sent as one URL-encoded path segment (docs/mappings.md)."""

from __future__ import annotations

import pytest
import responses

from tests.unit.connectors.test_sendinblue import (
    BASE,
    config,
    deliver,
    prop,
    settings,  # noqa: F401 (autouse: Brevo at BASE)
)
from worker.connectors.base import Change, Delivered, Transport, standalone_change
from worker.connectors.sendinblue import identifier_problem
from worker.core.errors import PermanentError
from worker.delivery.pipeline import final_reason

REFUSED = {
    "": "empty or blank",
    "   ": "empty or blank",
    ".": "'.' or '..' path segment",
    "..": "'.' or '..' path segment",
    " .. ": "'.' or '..' path segment",
    "../admin": "'.' or '..' path segment",
    "a/./b": "'.' or '..' path segment",
    "a\\..": "'.' or '..' path segment",
    "%2e%2E": "'.' or '..' path segment",
    "%2E%2e%2fx": "'.' or '..' path segment",
    "/": "empty path segment",
    "//": "empty path segment",
    "/u-1": "empty path segment",
    "u-1/": "empty path segment",
    "a//b": "empty path segment",
    "u-1\n": "control or invisible character",
    "u\x00-1": "control or invisible character",
    "u\u200b-1": "control or invisible character",
    "u\u202e-1": "control or invisible character",
    "u\u2028-1": "control or invisible character",
    "x" * 255: "longer than 254 characters",
}


@pytest.mark.parametrize(("user", "problem"), REFUSED.items())
def test_an_identifier_that_cannot_name_one_contact_is_never_sent(
    mocked: responses.RequestsMock, user: str, problem: str
) -> None:
    cfg = config("EMAIL_NOTIFICATION", upsert_mode=True)

    with pytest.raises(PermanentError) as caught:
        deliver(cfg, {prop("EMAIL_NOTIFICATION"): True}, user=user)
    with pytest.raises(PermanentError):  # the preview shows the same refusal
        cfg.connector.requests(
            cfg, standalone_change(cfg, user, {prop("EMAIL_NOTIFICATION"): True})
        )

    assert len(mocked.calls) == 0
    assert problem in identifier_problem(user)
    assert str(caught.value).startswith(
        "not sent to Brevo: the contact identifier (organization_user_id) cannot name one contact: "
    )
    assert caught.value.status is None
    assert final_reason(caught.value, []).startswith("refused by prefsync, not sent: ")


def test_it_is_refused_even_when_no_mapping_has_a_value(mocked: responses.RequestsMock) -> None:
    with pytest.raises(PermanentError):
        deliver(config("EMAIL_NOTIFICATION"), {}, user="..")


@pytest.mark.parametrize(
    ("user", "path"),
    [
        ("u-1", "u-1"),
        ("crm/12", "crm%2F12"),
        ("a?b#c d&e=f", "a%3Fb%23c%20d%26e%3Df"),
        ("100%", "100%25"),
        ("...", "..."),
        ("ü-1", "%C3%BC-1"),
        ("x" * 254, "x" * 254),
    ],
)
def test_any_other_identifier_is_one_url_encoded_path_segment(
    mocked: responses.RequestsMock, user: str, path: str
) -> None:
    mocked.put(f"{BASE}/contacts/{path}?identifierType=ext_id", status=204)

    result = deliver(config("EMAIL_NOTIFICATION"), {prop("EMAIL_NOTIFICATION"): True}, user=user)

    assert isinstance(result, Delivered)


def test_only_the_refused_change_of_a_batch_fails(mocked: responses.RequestsMock) -> None:
    mocked.put(f"{BASE}/contacts/u-1?identifierType=ext_id", status=204)
    mocked.put(f"{BASE}/contacts/u-2?identifierType=ext_id", status=204)
    cfg = config("EMAIL_NOTIFICATION")
    values = {prop("EMAIL_NOTIFICATION"): True}

    answers = cfg.connector.deliver_many(
        Transport(timeout=5),
        cfg,
        [Change("u-1", values), Change("..", values), Change("u-2", values)],
    )

    assert isinstance(answers[0], Delivered)
    assert isinstance(answers[1], PermanentError)
    assert isinstance(answers[2], Delivered)
    assert len(mocked.calls) == 2
