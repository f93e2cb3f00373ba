"""Mapping ids naming a vendor field whose type no consent or preference value has, or an
identifier of the contact, are refused when a config is stored (docs/mappings.md): Braze's
typed profile fields, Brevo's LANDLINE_NUMBER."""

from __future__ import annotations

from typing import Any

import pytest

from worker.connectors.config import parse_config
from worker.core.errors import InvalidConfig

KEY = "test-key-0000-abcdefgh"
PROPERTY = "consents_purposes_newsletter_enabled"

# Braze's user attributes object, "Braze user profile fields": every field of a fixed type
# or format, and the identifiers and call options beside them.
BRAZE_TYPED = [
    "alias_name",
    "alias_label",
    "push_token_import",
    "country",
    "current_location",
    "date_of_first_session",
    "date_of_last_session",
    "dob",
    "email_click_tracking_disabled",
    "email_open_tracking_disabled",
    "facebook",
    "gender",
    "language",
    "marked_email_as_spam_at",
    "push_tokens",
    "time_zone",
    "twitter",
]


def braze(mapping_id: str) -> dict[str, Any]:
    return {
        "type_id": "braze",
        "authentication": {"api_key": KEY, "server": "https://rest.fra-01.braze.eu"},
        "mappings": [{"id": mapping_id, "value": PROPERTY}],
    }


def brevo(mapping_id: str) -> dict[str, Any]:
    return {
        "type_id": "brevo",
        "config": {"api_key": KEY, "properties": [{"id": mapping_id, "value": PROPERTY}]},
    }


def problem(raw: dict[str, Any]) -> str:
    with pytest.raises(InvalidConfig) as caught:
        parse_config(raw)
    (line,) = str(caught.value).splitlines()
    return line


@pytest.mark.parametrize("mapping_id", BRAZE_TYPED + [name.upper() for name in BRAZE_TYPED])
def test_braze_refuses_a_typed_profile_field_as_a_custom_attribute(mapping_id: str) -> None:
    line = problem(braze(mapping_id))

    assert line.startswith(
        f"mappings[0].id: {mapping_id!r} is reserved by Braze and never a custom attribute: "
    )


def test_braze_names_the_type_and_the_id_to_map_instead() -> None:
    line = problem(braze("dob"))

    assert "a date of birth, YYYY-MM-DD" in line
    assert "such as 'pmp_dob'" in line


def test_braze_tracking_flags_are_refused_as_the_opposite_of_a_consent() -> None:
    assert "the opposite of a consent" in problem(braze("email_open_tracking_disabled"))


@pytest.mark.parametrize("mapping_id", ["first_name", "last_name", "home_city", "dob_consent"])
def test_braze_free_text_fields_and_look_alikes_stay_usable(mapping_id: str) -> None:
    assert parse_config(braze(mapping_id)).mappings[0].id == mapping_id


@pytest.mark.parametrize("mapping_id", ["LANDLINE_NUMBER", "landline_number"])
def test_brevo_refuses_the_landline_number_identifier(mapping_id: str) -> None:
    line = problem(brevo(mapping_id))

    assert line.startswith(
        f"config.properties[0].id: {mapping_id!r} is reserved by Brevo and never an attribute: "
        "it identifies the Brevo contact"
    )
