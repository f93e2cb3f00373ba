"""The fake Braze and Brevo (tests/fakes/destinations.py) on a local port."""

from __future__ import annotations

from tests.fakes.destinations import FakeDestinations


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
