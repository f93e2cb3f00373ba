"""Braze: every mapping row of docs/mappings.md becomes the exact /users/track request, and every
kind of answer the right result or error."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import responses
from pydantic import ValidationError

from worker.connectors import connectors
from worker.connectors.base import (
    Change,
    Delivered,
    HttpRequest,
    HttpResponse,
    Skipped,
    Transport,
    standalone_change,
)
from worker.connectors.config import parse_config
from worker.connectors.model import ConnectorConfig
from worker.core.errors import Deferred, PermanentError, RetryableError
from worker.core.outcomes import SkipReason
from worker.delivery.runtime import connector_settings
from worker.infra.settings import Settings, get_settings

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


def prop(mapping_id: str) -> str:
    """The property the test configs map ``mapping_id`` from."""
    return f"consents_purposes_{mapping_id}_enabled"


def config(*mapping_ids: str, upsert_mode: bool = False) -> ConnectorConfig:
    return parse_config(
        {
            "type_id": "braze",
            "authentication": {"api_key": KEY, "server": SERVER},
            "mappings": [
                {"id": mapping_id, "value": prop(mapping_id)} for mapping_id in mapping_ids
            ],
            "upsert_mode": upsert_mode,
        },
        connectors=connectors(connector_settings(get_settings())),
    )


def deliver(cfg: ConnectorConfig, values: dict[str, Any], user: str = USER) -> Any:
    return cfg.connector.deliver(Transport(timeout=5), cfg, standalone_change(cfg, user, values))


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

    result = deliver(config(mapping_id), {prop(mapping_id): value})

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
    values = {prop("OPTED_IN"): opted_in, prop("UNSUBSCRIBED"): unsubscribed}

    deliver(config("OPTED_IN", "UNSUBSCRIBED"), {k: v for k, v in values.items() if v is not None})

    assert sent(mocked)["attributes"][0]["email_subscribe"] == state


def test_full_example_body_and_headers(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    cfg = config("OPTED_IN", GROUP, "newsletter_frequency", "unmapped_here")
    values = {prop("OPTED_IN"): True, prop(GROUP): True, prop("newsletter_frequency"): "weekly"}

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

    deliver(config("OPTED_IN", upsert_mode=True), {prop("OPTED_IN"): True})

    assert sent(mocked)["attributes"][0]["_update_existing_only"] is False


def test_mapping_without_value_writes_nothing(mocked: responses.RequestsMock) -> None:
    accept(mocked)

    deliver(config("OPTED_IN", "likes_cats"), {prop("likes_cats"): True})

    assert sent(mocked)["attributes"][0] == {
        "external_id": USER,
        "_update_existing_only": True,
        "likes_cats": True,
    }


def test_nothing_mapped_sends_nothing_and_skips(mocked: responses.RequestsMock) -> None:
    cfg = config("OPTED_IN")

    assert cfg.connector.requests(cfg, standalone_change(cfg, USER, {"unrelated": True})) == []
    assert deliver(cfg, {"unrelated": True}) == Skipped(
        SkipReason.NO_MAPPED_VALUES, "no mapping has a value"
    )
    assert len(mocked.calls) == 0


def test_requests_preview_is_what_deliver_sends(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    cfg = config("OPTED_IN", GROUP)
    values = {prop("OPTED_IN"): False, prop(GROUP): True}

    (preview,) = cfg.connector.requests(cfg, standalone_change(cfg, USER, values))
    deliver(cfg, values)

    assert (preview.method, preview.url, preview.json) == ("POST", TRACK, sent(mocked))
    assert preview.redacted()["headers"]["Authorization"] == "Bearer …cdef"


@pytest.mark.parametrize("mapping_id", ["OPTED_IN", "UNSUBSCRIBED", GROUP])
def test_text_for_a_subscription_state_is_a_config_error(
    mocked: responses.RequestsMock, mapping_id: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        deliver(config(mapping_id), {prop(mapping_id): "yes"})

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
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

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
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})


def test_201_with_empty_errors_is_delivered(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=201, json={"message": "success", "errors": []})

    assert isinstance(deliver(config("OPTED_IN"), {prop("OPTED_IN"): True}), Delivered)


def test_credentials_error_says_so_without_the_key(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=401, json={"message": f"Invalid API key: {KEY}"})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

    message = str(caught.value)
    assert "API key is wrong or revoked, belongs to another instance than" in message
    assert KEY not in message
    assert "…cdef" in message


def test_redirect_names_its_target(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=301, headers={"Location": "https://rest.new.braze.eu/users/track"})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

    assert "redirect to https://rest.new.braze.eu/users/track" in str(caught.value)


def test_long_reasons_are_cut(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, status=400, json={"message": "x" * 5000})

    with pytest.raises(PermanentError) as caught:
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

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
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

    if expected is None:
        assert caught.value.retry_after is None
    else:
        assert caught.value.retry_after == pytest.approx(expected, abs=1.0)


def test_network_error_is_retried(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, body=requests.ConnectionError("refused"))

    with pytest.raises(RetryableError, match="network error") as caught:
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})

    assert caught.value.status is None


def test_timeout_is_retried(mocked: responses.RequestsMock) -> None:
    mocked.post(TRACK, body=requests.Timeout("slow"))

    with pytest.raises(RetryableError, match="timed out"):
        deliver(config("OPTED_IN"), {prop("OPTED_IN"): True})


# -- batches ---------------------------------------------------------------------------


def users(count: int) -> list[str]:
    return [f"u-{number}" for number in range(count)]


def opt_ins(*names: str) -> list[Change]:
    return [Change(name, {prop("OPTED_IN"): True}) for name in names]


def deliver_many(changes: list[Change], transport: Transport | None = None) -> list[Any]:
    cfg = config("OPTED_IN")
    changes = [standalone_change(cfg, change.user, change.values) for change in changes]
    return cfg.connector.deliver_many(transport or Transport(timeout=5), cfg, changes)


def success(errors: Any) -> dict[str, Any]:
    """A 201 body from Braze that accepted the call but lists ``errors``."""
    return {"message": "success", "errors": errors}


def sent_ids(request: requests.PreparedRequest) -> list[str]:
    return [obj["external_id"] for obj in json.loads(request.body)["attributes"]]


def sent_users(mocked: responses.RequestsMock) -> list[list[str]]:
    return [sent_ids(call.request) for call in mocked.calls]


OPTED_IN = {"email_subscribe": "opted_in"}


def test_changes_are_packed_in_calls_of_the_batch_size(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    names = users(120)

    answers = deliver_many(opt_ins(*names))

    assert sent_users(mocked) == [names[:50], names[50:100], names[100:]]
    assert sent(mocked, 2) == {
        "attributes": [
            {"external_id": name, "_update_existing_only": True, **OPTED_IN} for name in names[100:]
        ]
    }
    assert answers == [Delivered(201, OPTED_IN)] * 120


def test_batch_size_setting_is_respected(
    mocked: responses.RequestsMock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFSYNC_BRAZE_BATCH_SIZE", "75")
    get_settings.cache_clear()
    accept(mocked)
    names = users(120)

    deliver_many(opt_ins(*names))

    assert sent_users(mocked) == [names[:75], names[75:]]
    assert config("OPTED_IN").connector.batch_size == 75


@pytest.mark.parametrize("size", ["0", "76"])
def test_batch_size_beyond_brazes_cap_is_refused(
    monkeypatch: pytest.MonkeyPatch, size: str
) -> None:
    monkeypatch.setenv("PREFSYNC_BRAZE_BATCH_SIZE", size)

    with pytest.raises(ValidationError, match="braze_batch_size"):
        Settings()


def test_201_errors_refuse_only_the_objects_they_index(mocked: responses.RequestsMock) -> None:
    mocked.post(
        TRACK,
        status=201,
        json=success(
            [
                {"type": "'external_id' is blacklisted", "input_array": "attributes", "index": 1},
                {"type": "invalid attribute value", "index": 3},
                {"type": "about an event", "input_array": "events", "index": 0},
            ]
        ),
    )
    # The first change maps to nothing: Braze's indexes count the objects sent, not changes.
    changes = [Change("nothing", {"unrelated": True}), *opt_ins(*users(5))]

    answers = deliver_many(changes)

    assert sent_users(mocked) == [users(5)]
    assert isinstance(answers[0], Skipped)
    assert [type(answer) for answer in answers[1:]] == [
        Delivered,
        PermanentError,
        Delivered,
        PermanentError,
        Delivered,
    ]
    assert "HTTP 201" in str(answers[2])
    assert "'external_id' is blacklisted" in str(answers[2])
    assert "invalid attribute value" in str(answers[4])
    assert "about an event" not in str(answers[2]) + str(answers[4])


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (201, success([{"type": "no index"}]), RetryableError),
        (201, success([{"type": "text", "index": "1"}]), RetryableError),
        (201, success([{"type": "bool", "index": True}]), RetryableError),
        (201, success([{"type": "beyond", "index": 2}]), RetryableError),
        (201, success([{"type": "negative", "index": -1}]), RetryableError),
        (201, success("something failed"), RetryableError),
        (200, {"message": "queued"}, RetryableError),
        (404, {"message": "Not found"}, PermanentError),
        (401, {"message": "Invalid API key"}, PermanentError),
    ],
)
def test_answer_for_a_whole_call_stays_with_that_call(
    mocked: responses.RequestsMock,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    body: Any,
    error: type[Exception],
) -> None:
    monkeypatch.setenv("PREFSYNC_BRAZE_BATCH_SIZE", "2")
    get_settings.cache_clear()
    accept(mocked)
    mocked.post(TRACK, status=status, json=body)
    accept(mocked)

    answers = deliver_many(opt_ins(*users(5)))

    assert sent_users(mocked) == [["u-0", "u-1"], ["u-2", "u-3"], ["u-4"]]
    assert answers[:2] == [Delivered(201, OPTED_IN)] * 2
    assert isinstance(answers[2], error)
    assert answers[2].status == status
    assert answers[3] is answers[2]
    assert answers[4] == Delivered(201, OPTED_IN)


def too_large_when(
    predicate: Callable[[list[str]], bool],
) -> Callable[[requests.PreparedRequest], tuple[int, dict[str, str], str]]:
    """A Braze that answers 413 to the calls whose users ``predicate`` holds for."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if predicate(sent_ids(request)):
            return 413, {}, json.dumps({"message": "Payload too large"})
        return 201, {}, json.dumps({"message": "success"})

    return answer


def test_413_splits_the_call_until_the_halves_fit(mocked: responses.RequestsMock) -> None:
    mocked.add_callback(responses.POST, TRACK, callback=too_large_when(lambda ids: len(ids) > 12))
    names = users(50)

    answers = deliver_many(opt_ins(*names))

    assert sent_users(mocked) == [
        names,
        names[:25],
        names[:12],
        names[12:25],
        names[12:18],
        names[18:25],
        names[25:],
        names[25:37],
        names[37:],
        names[37:43],
        names[43:],
    ]
    assert answers == [Delivered(201, OPTED_IN)] * 50


def test_one_object_still_too_large_is_refused(mocked: responses.RequestsMock) -> None:
    mocked.add_callback(responses.POST, TRACK, callback=too_large_when(lambda ids: "u-0" in ids))

    answers = deliver_many(opt_ins(*users(4)))

    assert sent_users(mocked) == [users(4), ["u-0", "u-1"], ["u-0"], ["u-1"], ["u-2", "u-3"]]
    assert isinstance(answers[0], PermanentError)
    assert answers[0].status == 413
    assert "cannot be split further" in str(answers[0])
    assert answers[1:] == [Delivered(201, OPTED_IN)] * 3


@pytest.mark.parametrize(
    ("second", "retry_after"),
    [
        ({"status": 429, "json": {"message": "Too many requests"}}, 12.0),
        ({"status": 503, "json": {"message": "Unavailable"}}, None),
        ({"body": requests.ConnectionError("refused")}, None),
    ],
)
def test_retryable_answer_ends_the_batch(
    mocked: responses.RequestsMock, second: dict[str, Any], retry_after: float | None
) -> None:
    accept(mocked)
    mocked.post(TRACK, headers={"X-RateLimit-Reset": str(time.time() + 12)}, **second)

    answers = deliver_many(opt_ins(*users(120)))

    assert len(mocked.calls) == 2  # the third call is never sent
    assert answers[:50] == [Delivered(201, OPTED_IN)] * 50
    stop = answers[50]
    assert isinstance(stop, RetryableError)
    assert stop.retry_after == pytest.approx(retry_after, abs=1.0)
    assert all(answer is stop for answer in answers[50:])
    assert len(answers) == 120


class DeferredAfterFirstCall(Transport):
    """A paced transport whose account has no slot left after the first call."""

    def __init__(self) -> None:
        super().__init__(timeout=5)
        self.deferred = Deferred("paced: next call to this account in 2.00s", wait=2.0)
        self.sends = 0

    def send(self, request: HttpRequest) -> HttpResponse:
        self.sends += 1
        if self.sends > 1:
            raise self.deferred
        return super().send(request)


def test_deferred_call_ends_the_batch(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    transport = DeferredAfterFirstCall()

    answers = deliver_many(opt_ins(*users(120)), transport)

    assert transport.sends == 2
    assert len(mocked.calls) == 1
    assert answers[:50] == [Delivered(201, OPTED_IN)] * 50
    assert all(answer is transport.deferred for answer in answers[50:])
    assert len(answers) == 120


def test_changes_not_sent_answer_in_their_place(mocked: responses.RequestsMock) -> None:
    accept(mocked)
    changes = [
        Change("u-0", {prop("OPTED_IN"): True}),
        Change("u-2", {prop("OPTED_IN"): False}),
        Change("u-3", {}),
        Change("u-4", {prop("OPTED_IN"): True}),
    ]

    answers = deliver_many(changes)

    assert sent_users(mocked) == [["u-0", "u-2", "u-4"]]
    assert answers[0] == Delivered(201, OPTED_IN)
    assert answers[1] == Delivered(201, {"email_subscribe": "unsubscribed"})
    assert answers[2] == Skipped(SkipReason.NO_MAPPED_VALUES, "no mapping has a value")
    assert answers[3] == Delivered(201, OPTED_IN)


def test_text_in_a_subscription_property_is_refused_for_the_operator() -> None:
    with pytest.raises(PermanentError) as refused:
        standalone_change(config("OPTED_IN"), "u-1", {prop("OPTED_IN"): "yes"})

    assert refused.value.operator_action
    assert "mapping OPTED_IN needs a true/false property" in str(refused.value)


def test_nothing_to_send_makes_no_call(mocked: responses.RequestsMock) -> None:
    assert deliver_many([]) == []
    assert deliver_many([Change("u-0", {})]) == [
        Skipped(SkipReason.NO_MAPPED_VALUES, "no mapping has a value")
    ]
    assert len(mocked.calls) == 0
