"""Braze: every mapping row of braze.md becomes the exact /users/track request, and every
kind of answer the right result or error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from worker.configs import ConnectorConfig, parse_config
from worker.connectors.base import Delivered, Skipped, Transport
from worker.errors import PermanentError, RetryableError
from worker.outcomes import SkipReason
from worker.settings import get_settings

KEY = "xkeysib-TESTKEY-0123456789abcdef"
SERVER = "https://rest.fra-01.braze.eu"
TRACK = f"{SERVER}/users/track"
GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"
USER = "u-123"


@pytest.fixture(autouse=True)
def settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("PREFSYNC_RATE_LIMIT_MAX_WAIT", "30")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def config(*mapping_ids: str, upsert_mode: bool = False) -> ConnectorConfig:
    return parse_config(
        {
            "type_id": "braze",
            "authentication": {"api_key": KEY, "server": SERVER},
            "mappings": [
                {"id": mapping_id, "value": f"p_{mapping_id}"} for mapping_id in mapping_ids
            ],
            "upsert_mode": upsert_mode,
        }
    )


def deliver(cfg: ConnectorConfig, values: dict[str, Any], user: str = USER) -> Any:
    return cfg.connector.deliver(Transport(timeout=5), cfg, user, values)


def sent(mocked: responses.RequestsMock, index: int = 0) -> dict[str, Any]:
    return json.loads(mocked.calls[index].request.body)


def accept(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=201, json={"message": "success", "attributes_processed": 1})


# -- mappings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping_id", "value", "fields"),
    [
        ("OPTED_IN", True, {"email_subscribe": "opted_in"}),
        ("OPTED_IN", False, {"email_subscribe": "unsubscribed"}),
        ("UNSUBSCRIBED", True, {"email_subscribe": "unsubscribed"}),
        ("UNSUBSCRIBED", False, {"email_subscribe": "subscribed"}),
        ("opted_in", True, {"email_subscribe": "opted_in"}),
        (
            GROUP,
            True,
            {
                "subscription_groups": [
                    {"subscription_group_id": GROUP, "subscription_state": "subscribed"}
                ]
            },
        ),
        (
            GROUP.upper(),
            False,
            {
                "subscription_groups": [
                    {"subscription_group_id": GROUP.upper(), "subscription_state": "unsubscribed"}
                ]
            },
        ),
        ("newsletter_frequency", "weekly", {"newsletter_frequency": "weekly"}),
        ("likes_cats", True, {"likes_cats": True}),
        ("likes_cats", False, {"likes_cats": False}),
        ("7c0b8f2e-4b7e-4d2a-9b1e", True, {"7c0b8f2e-4b7e-4d2a-9b1e": True}),  # not a full UUID
    ],
)
def test_mapping_row_becomes_the_braze_field(
    mocked: responses.RequestsMock, mapping_id: str, value: Any, fields: dict[str, Any]
) -> None:
    accept(mocked)

    result = deliver(config(mapping_id), {f"p_{mapping_id}": value})

    assert sent(mocked) == {
        "attributes": [{"external_id": USER, "_update_existing_only": True, **fields}]
    }
    assert result == Delivered(201, fields)


@pytest.mark.parametrize(
    ("opted_in", "unsubscribed", "state"),
    [
        (True, False, "opted_in"),
        (True, True, "unsubscribed"),
        (False, False, "unsubscribed"),
        (False, True, "unsubscribed"),
        (None, False, "subscribed"),
        (True, None, "opted_in"),
    ],
)
def test_email_state_precedence(
    mocked: responses.RequestsMock, opted_in: bool | None, unsubscribed: bool | None, state: str
) -> None:
    accept(mocked)
    values = {"p_OPTED_IN": opted_in, "p_UNSUBSCRIBED": unsubscribed}

    deliver(config("OPTED_IN", "UNSUBSCRIBED"), {k: v for k, v in values.items() if v is not None})

    assert sent(mocked)["attributes"][0]["email_subscribe"] == state


def test_full_example_body_and_headers(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    cfg = config("OPTED_IN", GROUP, "newsletter_frequency", "unmapped_here")
    values = {"p_OPTED_IN": True, f"p_{GROUP}": True, "p_newsletter_frequency": "weekly"}

    result = deliver(cfg, values)

    request = mocked.calls[0].request
    assert request.method == "POST"
    assert request.url == TRACK
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert list(sent(mocked)["attributes"][0].items()) == [
        ("external_id", USER),
        ("_update_existing_only", True),
        ("email_subscribe", "opted_in"),
        (
            "subscription_groups",
            [{"subscription_group_id": GROUP, "subscription_state": "subscribed"}],
        ),
        ("newsletter_frequency", "weekly"),
    ]
    assert result.fields == {
        "email_subscribe": "opted_in",
        "subscription_groups": [
            {"subscription_group_id": GROUP, "subscription_state": "subscribed"}
        ],
        "newsletter_frequency": "weekly",
    }


def test_upsert_mode_lets_braze_create_the_user(mocked: responses.RequestsMock) -> None:
    accept(mocked)

    deliver(config("OPTED_IN", upsert_mode=True), {"p_OPTED_IN": True})

    assert sent(mocked)["attributes"][0]["_update_existing_only"] is False


def test_mapping_without_value_writes_nothing(mocked: responses.RequestsMock) -> None:
    accept(mocked)

    deliver(config("OPTED_IN", "likes_cats"), {"p_likes_cats": True})

    assert sent(mocked)["attributes"][0] == {
        "external_id": USER,
        "_update_existing_only": True,
        "likes_cats": True,
    }


def test_nothing_mapped_sends_nothing_and_skips(mocked: responses.RequestsMock) -> None:
    cfg = config("OPTED_IN")

    assert cfg.connector.requests(cfg, USER, {"unrelated": True}) == []
    assert deliver(cfg, {"unrelated": True}) == Skipped(
        SkipReason.NO_MAPPED_VALUES, "no mapping has a value"
    )
    assert len(mocked.calls) == 0


def test_requests_preview_is_what_deliver_sends(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    cfg = config("OPTED_IN", GROUP)
    values = {"p_OPTED_IN": False, f"p_{GROUP}": True}

    (preview,) = cfg.connector.requests(cfg, USER, values)
    deliver(cfg, values)

    assert (preview.method, preview.url, preview.json) == ("POST", TRACK, sent(mocked))
    assert preview.redacted()["headers"]["Authorization"] == "Bearer …cdef"


@pytest.mark.parametrize("mapping_id", ["OPTED_IN", "UNSUBSCRIBED", GROUP])
def test_text_for_a_subscription_state_is_a_config_error(
    mocked: responses.RequestsMock, mapping_id: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        deliver(config(mapping_id), {f"p_{mapping_id}": "yes"})

    assert caught.value.operator_action
    assert f"mapping {mapping_id} needs a true/false property" in str(caught.value)
    assert len(mocked.calls) == 0


# -- answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error", "operator_action"),
    [
        (
            201,
            {
                "message": "success",
                "errors": [
                    {
                        "type": "'external_id' is blacklisted",
                        "input_array": "attributes",
                        "index": 0,
                    }
                ],
            },
            PermanentError,
            False,
        ),
        (200, {"message": "queued"}, RetryableError, None),
        (201, "<html>proxy</html>", RetryableError, None),
        (201, None, RetryableError, None),
        (201, ["success"], RetryableError, None),
        (301, None, PermanentError, True),
        (302, None, PermanentError, True),
        (400, {"message": "Invalid 'attributes' field"}, PermanentError, False),
        (401, {"message": "Invalid API key"}, PermanentError, True),
        (403, {"message": "Access denied"}, PermanentError, True),
        (404, {"message": "Not found"}, PermanentError, False),
        (408, None, RetryableError, None),
        (425, {"message": "Too early"}, RetryableError, None),
        (409, {"message": "Conflict"}, PermanentError, False),
        (413, {"message": "Payload too large"}, PermanentError, False),
        (422, {"message": "Unprocessable"}, PermanentError, False),
        (429, {"message": "Too many requests"}, RetryableError, None),
        (500, {"message": "Internal error"}, RetryableError, None),
        (502, "Bad gateway", RetryableError, None),
        (503, None, RetryableError, None),
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
        mocked.post(TRACK, status=status, body=body)
    elif body is None:
        mocked.post(TRACK, status=status)
    else:
        mocked.post(TRACK, status=status, json=body)

    with pytest.raises(error) as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    assert caught.value.status == status
    assert f"HTTP {status}" in str(caught.value)
    if operator_action is not None:
        assert caught.value.operator_action is operator_action


def test_201_with_errors_carries_brazes_message(mocked: responses.RequestsMock) -> None:
    mocked.post(
        TRACK,
        status=201,
        json={
            "message": "success",
            "errors": [{"type": "'external_id' is blacklisted", "index": 0}],
        },
    )

    with pytest.raises(PermanentError, match="'external_id' is blacklisted"):
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})


def test_201_with_empty_errors_is_delivered(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=201, json={"message": "success", "errors": []})

    assert isinstance(deliver(config("OPTED_IN"), {"p_OPTED_IN": True}), Delivered)


def test_credentials_error_says_so_without_the_key(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=401, json={"message": f"Invalid API key: {KEY}"})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    message = str(caught.value)
    assert "API key is wrong or revoked, belongs to another instance than" in message
    assert KEY not in message
    assert "…cdef" in message


def test_redirect_names_its_target(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=301, headers={"Location": "https://rest.new.braze.eu/users/track"})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    assert "redirect to https://rest.new.braze.eu/users/track" in str(caught.value)


def test_long_reasons_are_cut(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=400, json={"message": "x" * 5000})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    assert len(str(caught.value)) < 400


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Reset": "+12"}, 12.0),
        ({"x-ratelimit-reset": "+12"}, 12.0),  # HTTP/2 lower-case names
        ({"X-RateLimit-Reset": "-50"}, 0.0),  # already past
        ({"X-RateLimit-Reset": "+4000"}, 30.0),  # capped by rate_limit_max_wait
        ({"X-RateLimit-Reset": "soon"}, None),
        ({"X-RateLimit-Reset": "nan"}, None),
        ({}, None),
    ],
)
def test_429_waits_until_the_reset_within_the_cap(
    mocked: responses.RequestsMock, headers: dict[str, str], expected: float | None
) -> None:
    now = time.time()
    epoch = {
        name: str(now + float(value)) if value[:1] in "+-" else value
        for name, value in headers.items()
    }
    mocked.post(TRACK, status=429, headers=epoch, json={"message": "Too many requests"})

    with pytest.raises(RetryableError) as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(expected, abs=1.0)


def test_network_error_is_retried(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, body=requests.ConnectionError("refused"))

    with pytest.raises(RetryableError, match="network error") as caught:
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})

    assert caught.value.status is None


def test_timeout_is_retried(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, body=requests.Timeout("slow"))

    with pytest.raises(RetryableError, match="timed out"):
        deliver(config("OPTED_IN"), {"p_OPTED_IN": True})
