"""A 400 from Braze for a call of several users splits the call until the object at fault
is alone: only that user is refused (docs/choices.md)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
import requests
import responses

from tests.unit.connectors.test_braze import OPTED_IN, TRACK, deliver_many, opt_ins, sent_ids, users
from worker.connectors.base import Delivered
from worker.core.errors import PermanentError
from worker.infra.settings import get_settings


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock() as mock:
        yield mock


@pytest.fixture(autouse=True)
def settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def refusing(
    bad: Callable[[list[str]], bool], message: str = "Invalid 'attributes' object"
) -> Callable[[requests.PreparedRequest], tuple[int, dict[str, str], str]]:
    """A Braze that answers 400 to every call holding a user ``bad`` picks."""

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        if bad(sent_ids(request)):
            return 400, {}, json.dumps({"message": message})
        return 201, {}, json.dumps({"message": "success"})

    return answer


def calls(mocked: responses.RequestsMock) -> list[list[str]]:
    return [sent_ids(call.request) for call in mocked.calls]


def test_one_bad_object_of_50_refuses_only_its_user(mocked: responses.RequestsMock) -> None:
    mocked.add_callback(
        responses.POST,
        TRACK,
        callback=refusing(lambda ids: "u-37" in ids, "Invalid custom attribute"),
    )
    names = users(50)

    answers = deliver_many(opt_ins(*names))

    refused = answers[37]
    assert isinstance(refused, PermanentError)
    assert refused.status == 400
    assert "Invalid custom attribute" in str(refused)
    assert answers[:37] + answers[38:] == [Delivered(201, OPTED_IN)] * 49
    # Halves down to the object alone: about 2 * log2(50) calls, not one per user.
    assert ["u-37"] in calls(mocked)
    assert len(mocked.calls) == 11


def test_a_400_for_too_many_objects_splits_until_the_calls_are_taken(
    mocked: responses.RequestsMock,
) -> None:
    mocked.add_callback(
        responses.POST, TRACK, callback=refusing(lambda ids: len(ids) > 20, "Too many objects")
    )

    answers = deliver_many(opt_ins(*users(50)))

    assert answers == [Delivered(201, OPTED_IN)] * 50
    taken = [sent_ids(c.request) for c in mocked.calls if c.response.status_code == 201]
    assert sorted(name for ids in taken for name in ids) == sorted(users(50))
    assert max(len(ids) for ids in taken) <= 20


def test_a_single_user_400_is_refused_with_brazes_message(mocked: responses.RequestsMock) -> None:
    mocked.add_callback(
        responses.POST, TRACK, callback=refusing(lambda ids: True, "'attributes' must be an array")
    )

    (answer,) = deliver_many(opt_ins("u-0"))

    assert len(mocked.calls) == 1
    assert isinstance(answer, PermanentError)
    assert answer.status == 400
    assert str(answer) == ("Braze refused the update (HTTP 400): 'attributes' must be an array")


def test_every_object_refused_ends_each_alone(mocked: responses.RequestsMock) -> None:
    mocked.add_callback(responses.POST, TRACK, callback=refusing(lambda ids: True))

    answers = deliver_many(opt_ins(*users(4)))

    assert calls(mocked) == [users(4), ["u-0", "u-1"], ["u-0"], ["u-1"], ["u-2", "u-3"],
                             ["u-2"], ["u-3"]]  # fmt: skip
    assert all(isinstance(answer, PermanentError) and answer.status == 400 for answer in answers)


@pytest.mark.parametrize("status", [404, 409, 422])
def test_other_refusals_of_a_call_are_not_split(
    mocked: responses.RequestsMock, status: int
) -> None:
    mocked.post(TRACK, status=status, json={"message": "no"})

    answers = deliver_many(opt_ins(*users(4)))

    assert len(mocked.calls) == 1
    assert all(isinstance(answer, PermanentError) for answer in answers)
