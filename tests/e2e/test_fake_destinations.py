"""The local Braze/Brevo look-alike (tests/fakes/destinations.py), served on a local port,
answers like the real services and records what it got."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.fakes.destinations import FakeDestinations

BRAZE_AUTH = {"Authorization": "Bearer test-key"}
BREVO_AUTH = {"api-key": "test-key"}


@pytest.fixture
def fake() -> Iterator[FakeDestinations]:
    fake = FakeDestinations().start()
    yield fake
    fake.stop()


def track(fake: FakeDestinations, body: object, headers: dict | None = None) -> requests.Response:
    return requests.post(
        f"{fake.url}/users/track", json=body, headers=BRAZE_AUTH if headers is None else headers
    )


def update_contact(fake: FakeDestinations, quoted_identifier: str) -> requests.Response:
    return requests.put(
        f"{fake.url}/v3/contacts/{quoted_identifier}?identifierType=ext_id",
        json={"attributes": {"NEWSLETTER": True}},
        headers=BREVO_AUTH,
    )


def test_braze_track_is_accepted_and_recorded(fake):
    body = {"attributes": [{"external_id": "u-1", "email_subscribe": "opted_in"}]}

    response = track(fake, body)

    assert response.status_code == 201
    assert response.json() == {"message": "success", "attributes_processed": 1}
    assert {"x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"} <= {
        name.lower() for name in response.headers
    }
    [call] = fake.calls("braze")
    assert (call.method, call.path, call.body, call.status) == ("POST", "/users/track", body, 201)
    assert call.headers["authorization"] == "Bearer test-key"
    assert call.identifier is None
    assert fake.calls("brevo") == []


def test_braze_refuses_missing_key_and_bad_body(fake):
    assert track(fake, {"attributes": []}, headers={}).json() == {"message": "Invalid API Key"}
    assert track(fake, {"attributes": []}, headers={}).status_code == 401
    assert track(fake, {"nope": 1}).status_code == 400
    assert requests.post(f"{fake.url}/users/track", data="{", headers=BRAZE_AUTH).status_code == 400


def test_braze_reports_objects_without_user_id_as_errors(fake):
    response = track(fake, {"attributes": [{"external_id": "u-1"}, {"color": "red"}]})

    assert response.status_code == 201
    assert response.json()["attributes_processed"] == 1
    assert [e["index"] for e in response.json()["errors"]] == [1]


def test_braze_refuses_a_whole_call_holding_a_refused_user(fake):
    fake.refuse_braze_user("u-2", "Invalid custom attribute")
    control = f"{fake.url}/_fake"
    assert requests.post(f"{control}/braze_refuse", json={"external_id": "u-3"}).ok

    with_u2 = track(fake, {"attributes": [{"external_id": "u-1"}, {"external_id": "u-2"}]})
    with_u3 = track(fake, {"attributes": [{"external_id": "u-3"}]})
    without = track(fake, {"attributes": [{"external_id": "u-1"}]})

    assert (with_u2.status_code, with_u2.json()) == (400, {"message": "Invalid custom attribute"})
    assert (with_u3.status_code, with_u3.json()) == (400, {"message": "Invalid user object"})
    assert without.status_code == 201
    fake.reset()
    assert track(fake, {"attributes": [{"external_id": "u-2"}]}).status_code == 201


def test_unknown_route_is_404(fake):
    assert requests.post(f"{fake.url}/users/nope", json={}, headers=BRAZE_AUTH).status_code == 404
    assert requests.get(f"{fake.url}/v3/contacts", headers=BREVO_AUTH).status_code == 404
    assert [c.service for c in fake.calls()] == ["braze", "brevo"]


def test_brevo_update_records_decoded_identifier(fake):
    response = update_contact(fake, "a%2Bb%40example.com")

    assert response.status_code == 204
    assert "x-sib-ratelimit-reset" in response.headers
    [call] = fake.calls("brevo")
    assert call.path == "/v3/contacts/a%2Bb%40example.com"
    assert call.identifier == "a+b@example.com"
    assert call.query == {"identifierType": "ext_id"}


def test_brevo_refuses_missing_key(fake):
    response = requests.put(f"{fake.url}/v3/contacts/u-1", json={})

    assert response.status_code == 401
    assert response.json() == {"code": "unauthorized", "message": "Key not found"}


def test_strict_brevo_knows_only_added_or_created_contacts():
    with FakeDestinations(strict_contacts=True) as fake:
        fake.add_brevo_contact("known")
        assert update_contact(fake, "known").status_code == 204

        unknown = update_contact(fake, "u-2")
        assert unknown.status_code == 404
        assert unknown.json()["code"] == "document_not_found"

        create = {"ext_id": "u-2", "attributes": {}, "updateEnabled": True}
        created = requests.post(f"{fake.url}/v3/contacts", json=create, headers=BREVO_AUTH)
        assert created.status_code == 201
        assert isinstance(created.json()["id"], int)
        again = requests.post(f"{fake.url}/v3/contacts", json=create, headers=BREVO_AUTH)
        assert again.status_code == 204
        assert update_contact(fake, "u-2").status_code == 204
        assert fake.brevo_contacts == {"known", "u-2"}


def test_fail_next_answers_scripted_failures_then_recovers(fake):
    fake.fail_next("braze", 2, status=429, headers={"X-RateLimit-Reset": "123"})

    statuses = [track(fake, {"attributes": []}) for _ in range(3)]

    assert [r.status_code for r in statuses] == [429, 429, 201]
    assert statuses[0].headers["X-RateLimit-Reset"] == "123"
    assert statuses[0].headers["X-RateLimit-Remaining"] == "0"
    assert [c.status for c in fake.calls("braze")] == [429, 429, 201]
    assert update_contact(fake, "u-1").status_code == 204  # the other service is unaffected


def test_fail_next_status_zero_drops_the_connection(fake):
    fake.fail_next("brevo", 1, status=0)

    with pytest.raises(requests.ConnectionError):
        update_contact(fake, "u-1")
    assert update_contact(fake, "u-1").status_code == 204


def test_outage_lasts_until_recover(fake):
    fake.outage("brevo", status=502)
    assert [update_contact(fake, "u-1").status_code for _ in range(3)] == [502] * 3

    fake.recover("brevo")
    assert update_contact(fake, "u-1").status_code == 204


def test_throttle_answers_429_naming_its_end_as_the_reset_and_records_the_answer(fake):
    before = time.time()
    fake.throttle("braze", 30)
    fake.throttle("brevo", 30)

    braze, brevo = track(fake, {"attributes": []}), update_contact(fake, "u-1")

    assert (braze.status_code, brevo.status_code) == (429, 429)
    # Braze gives the reset as epoch seconds, Brevo as seconds from now; both name the end.
    assert before + 30 <= int(braze.headers["X-RateLimit-Reset"]) <= time.time() + 31
    assert 29 <= int(brevo.headers["x-sib-ratelimit-reset"]) <= 30
    assert braze.headers["X-RateLimit-Remaining"] == brevo.headers["x-sib-ratelimit-remaining"]
    recorded = fake.calls()
    assert [c.status for c in recorded] == [429, 429]
    assert recorded[0].answer_headers["X-RateLimit-Reset"] == braze.headers["X-RateLimit-Reset"]
    assert recorded[1].answer_headers == {
        name.lower(): value for name, value in brevo.headers.items() if name.startswith("x-sib")
    }

    fake.throttle("braze", 0)
    assert track(fake, {"attributes": []}).status_code == 201
    assert update_contact(fake, "u-1").status_code == 429  # only the lifted service recovers
    assert requests.post(f"{fake.url}/_fake/throttle", json={"service": "brevo", "seconds": 0}).ok
    assert update_contact(fake, "u-1").status_code == 204


def test_delay_slows_answers(fake):
    fake.set_delay("braze", 0.3)

    with pytest.raises(requests.Timeout):
        requests.post(
            f"{fake.url}/users/track", json={"attributes": []}, headers=BRAZE_AUTH, timeout=0.1
        )
    assert fake.calls("braze")[0].status == 201  # processed, though the client gave up


def test_reset_forgets_calls_and_scripts(fake):
    track(fake, {"attributes": []})
    fake.outage("braze")

    fake.reset()

    assert fake.calls() == []
    assert track(fake, {"attributes": []}).status_code == 201


def test_control_api_scripts_and_reports(fake):
    control = f"{fake.url}/_fake"
    assert requests.post(f"{control}/fail_next", json={"service": "braze", "count": 1}).ok
    assert track(fake, {"attributes": []}).status_code == 503
    assert requests.post(f"{control}/outage", json={"service": "brevo", "status": 500}).ok
    assert update_contact(fake, "u-1").status_code == 500
    assert requests.post(f"{control}/recover", json={"service": "brevo"}).ok
    assert update_contact(fake, "u-1").status_code == 204

    calls = requests.get(f"{control}/calls", params={"service": "brevo"}).json()
    assert [(c["identifier"], c["status"]) for c in calls] == [("u-1", 500), ("u-1", 204)]
    assert calls[0]["at"] <= calls[1]["at"] <= time.time()

    assert [c.status for c in fake.calls()] == [503, 500, 204]  # control calls not recorded

    assert requests.post(f"{control}/reset").ok
    assert requests.get(f"{control}/calls").json() == []
    assert requests.post(f"{control}/outage", json={"service": "nope"}).status_code == 400


def test_control_api_makes_brevo_contacts_strict(fake):
    control = f"{fake.url}/_fake"
    assert requests.post(f"{control}/strict_contacts", json={"strict": True}).ok
    assert update_contact(fake, "u-1").status_code == 404

    assert requests.post(f"{control}/brevo_contacts", json={"identifier": "u-1"}).ok

    assert update_contact(fake, "u-1").status_code == 204
    assert requests.get(f"{control}/brevo_contacts").json() == {"strict": True, "contacts": ["u-1"]}


def test_stop_closes_kept_alive_connections():
    fake = FakeDestinations().start()
    session = requests.Session()
    assert session.post(f"{fake.url}/users/track", json={"attributes": []}, headers=BRAZE_AUTH)

    fake.stop()

    with pytest.raises(requests.ConnectionError):
        session.post(f"{fake.url}/users/track", json={"attributes": []}, headers=BRAZE_AUTH)


def test_restart_listens_on_the_same_port():
    fake = FakeDestinations().start()
    url = fake.url
    fake.stop()

    fake.start()
    try:
        assert fake.url == url
        assert track(fake, {"attributes": []}).status_code == 201
    finally:
        fake.stop()


def test_the_fake_deletes_in_braze_and_brevo() -> None:
    with FakeDestinations() as fake:
        session = __import__("requests").Session()
        braze_answer = session.post(
            f"{fake.url}/users/delete",
            json={"external_ids": ["a", "b"]},
            headers={"Authorization": "Bearer k"},
        )
        assert (braze_answer.status_code, braze_answer.json()["deleted"]) == (201, 2)
        assert fake.braze_deleted == ["a", "b"]
        too_many = session.post(
            f"{fake.url}/users/delete",
            json={"external_ids": [str(n) for n in range(51)]},
            headers={"Authorization": "Bearer k"},
        )
        assert too_many.status_code == 400
        url = f"{fake.url}/v3/contacts/a%40b.c?identifierType=email_id"
        headers = {"api-key": "k"}
        assert session.delete(url, headers=headers).status_code == 204
        again = session.delete(url, headers=headers)
        assert (again.status_code, again.json()["code"]) == (404, "document_not_found")
        assert session.put(url, json={}, headers=headers).status_code == 404


GROUP = "7c0b8f2e-4b7e-4d2a-9b1e-2f6a3c1d9e55"


def test_braze_answers_reads_from_the_state_it_was_told_and_edits(fake):
    obj = {
        "external_id": "u-1",
        "email_subscribe": "opted_in",
        "colour": "blue",
        "subscription_groups": [
            {"subscription_group_id": GROUP, "subscription_state": "subscribed"}
        ],
    }
    assert track(fake, {"attributes": [obj]}).status_code == 201
    export = {"external_ids": ["u-1", "u-2"], "fields_to_export": ["external_id"]}
    answer = requests.post(f"{fake.url}/users/export/ids", json=export, headers=BRAZE_AUTH).json()
    assert answer["users"] == [
        {
            "external_id": "u-1",
            "email_subscribe": "opted_in",
            "push_subscribe": "subscribed",
            "custom_attributes": {"colour": "blue"},
        }
    ]
    assert answer["invalid_user_ids"] == ["u-2"]
    status_url = f"{fake.url}/subscription/status/get"
    query = {"subscription_group_id": GROUP, "external_id[]": ["u-1", "u-2"]}
    status = requests.get(status_url, params=query, headers=BRAZE_AUTH).json()["status"]
    assert status == {"u-1": "Subscribed", "u-2": "Unknown"}

    edit = {"external_id": "u-1", "fields": {GROUP: "unsubscribed", "colour": "red"}}
    assert requests.post(f"{fake.url}/_fake/braze_profile", json=edit).status_code == 200
    status = requests.get(status_url, params=query, headers=BRAZE_AUTH).json()["status"]
    assert status["u-1"] == "Unsubscribed"
    assert fake.braze_profile("u-1")["custom_attributes"] == {"colour": "red"}


def test_brevo_answers_contact_reads_from_the_state_it_was_told_and_edits(fake):
    body = {"emailBlacklisted": True, "attributes": {"COLOUR": "blue"}}
    url = f"{fake.url}/v3/contacts/ann%40example.com?identifierType=email_id"
    assert requests.put(url, json=body, headers=BREVO_AUTH).status_code == 204
    contact = requests.get(url, headers=BREVO_AUTH).json()
    assert (contact["emailBlacklisted"], contact["smsBlacklisted"]) == (True, False)
    assert contact["attributes"] == {"COLOUR": "blue"}
    edit = {"identifier": "ann@example.com", "fields": {"emailBlacklisted": False, "COLOUR": "x"}}
    assert requests.post(f"{fake.url}/_fake/brevo_contact", json=edit).status_code == 200
    contact = requests.get(url, headers=BREVO_AUTH).json()
    assert (contact["emailBlacklisted"], contact["attributes"]) == (False, {"COLOUR": "x"})
    never = f"{fake.url}/v3/contacts/bob%40example.com?identifierType=email_id"
    assert requests.get(never, headers=BREVO_AUTH).status_code == 404
