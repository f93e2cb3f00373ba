"""A destination's message kept without the person it names (worker.core.masking)."""

from __future__ import annotations

import pytest

from worker.core.masking import PERSON, without_person


@pytest.mark.parametrize(
    "message",
    [
        "bad external id dora@example.com",
        "bad external id Dora@Example.COM",
        "contact dora%40example.com does not exist",
        "dora@example.com",
    ],
)
def test_the_persons_id_is_cut_out_in_any_case_and_as_a_path_carries_it(message: str) -> None:
    scrubbed = without_person(message, "dora@example.com")
    assert "dora" not in scrubbed.lower()
    assert PERSON in scrubbed


def test_a_short_id_is_not_cut_out_of_other_words() -> None:
    assert without_person("ZeroDivisionError: poisoned", "poison") == (
        "ZeroDivisionError: poisoned"
    )
    assert without_person("user poison refused", "poison") == f"user {PERSON} refused"
