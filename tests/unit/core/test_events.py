"""Preference events: parsing webhook payloads, flat property names, ordering, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.core.errors import InvalidEvent
from worker.core.events import (
    EVENT_TYPES,
    MAX_VERSION,
    MAX_VERSION_STEP,
    FlatProperties,
    OrderingKey,
    PreferenceEvent,
    parse_event,
)
from worker.core.outcomes import SkipReason

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "events"

EARLIER = "2026-11-20T09:15:02.000Z"
LATER = "2026-11-21T18:02:44.000Z"


# --- Payload builders -----------------------------------------------------------------


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def purpose(id: str, enabled: bool | None = True, **fields: Any) -> dict[str, Any]:
    return {"id": id, "enabled": enabled, **fields}


def consent_event(**fields: Any) -> dict[str, Any]:
    """A confirmed consent event for jane@example.com in tenant acme; override any field."""
    entity = {
        "id": "ev-1",
        "organization_id": "acme",
        "created_at": EARLIER,
        "updated_at": EARLIER,
        "status": "confirmed",
        "user": {"id": "u-1", "organization_user_id": "jane@example.com"},
        "consents": {"purposes": [purpose("newsletter")]},
    }
    return {**entity, **fields}


def user(**fields: Any) -> dict[str, Any]:
    """A user (full status) for jane@example.com in tenant acme; override any field."""
    entity = {
        "id": "u-1",
        "organization_id": "acme",
        "organization_user_id": "jane@example.com",
        "created_at": EARLIER,
        "updated_at": EARLIER,
        "version": 1,
        "consents": {"purposes": [purpose("newsletter")]},
    }
    return {**entity, **fields}


def without(entity: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in entity.items() if key not in keys}


def envelope(type: str, **parameters: Any) -> dict[str, Any]:
    return {"type": type, "parameters": parameters}


def change(type: str, old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    return envelope(type, source={"id": "src-1"}, old_entity=old, new_entity=new)


def properties(consents: dict[str, Any] | None) -> FlatProperties:
    """The flat property map of a consent event carrying ``consents`` (or null)."""
    return parse_event(
        envelope("event.created", entity=consent_event(consents=consents))
    ).properties


def flat(*purposes: dict[str, Any], **consents: Any) -> FlatProperties:
    return properties({"purposes": list(purposes), **consents})


def refusal(payload: object, **kwargs: Any) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(payload, **kwargs)
    return str(caught.value)


# --- Flat property grammar ------------------------------------------------------------


def test_purpose_enabled_true_and_false_are_both_values() -> None:
    props = flat(purpose("newsletter", True), purpose("ads", False))

    assert props.get("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        True,
    )
    assert props.get("consents_purposes_ads_enabled") == ("consents_purposes_ads_enabled", False)


def test_purpose_enabled_null_or_absent_has_no_value() -> None:
    props = flat(purpose("newsletter", None), {"id": "ads"})

    assert props.get("consents_purposes_newsletter_enabled") is None
    assert props.get("consents_purposes_ads_enabled") is None


def test_purpose_not_in_the_payload_has_no_value() -> None:
    props = flat(purpose("newsletter"))

    assert props.get("consents_purposes_ads_enabled") is None


def test_legitimate_interest_is_its_own_property() -> None:
    props = flat(
        purpose("analytics", None, enabled_li=False), purpose("ads", True, enabled_li=None)
    )

    assert props.get("consents_purposes_analytics_enabled_li") == (
        "consents_purposes_analytics_enabled_li",
        False,
    )
    assert props.get("consents_purposes_analytics_enabled") is None
    assert props.get("consents_purposes_ads_enabled_li") is None


def test_preference_value_is_the_raw_comma_separated_string() -> None:
    props = flat(purpose("newsletter", values={"topics": {"value": "sport, news"}}))

    assert props.get("consents_purposes_newsletter_values_topics_value") == (
        "consents_purposes_newsletter_values_topics_value",
        "sport, news",
    )


def test_preference_value_wildcard_is_true_for_each_listed_value() -> None:
    props = flat(purpose("newsletter", values={"topics": {"value": " sport, ,news ,"}}))

    for value in ("sport", "news"):
        name = f"consents_purposes_newsletter_preferences_topics_values_{value}_enabled"
        assert props.get(name) == (name, True)


def test_preference_value_wildcard_is_false_for_a_value_not_listed() -> None:
    props = flat(purpose("newsletter", values={"topics": {"value": "sport"}}))
    name = "consents_purposes_newsletter_preferences_topics_values_cooking_enabled"

    assert props.get(name) == (name, False)


def test_preference_value_wildcard_is_false_for_every_value_of_an_empty_list() -> None:
    props = flat(purpose("newsletter", values={"topics": {"value": ""}}))
    name = "consents_purposes_newsletter_preferences_topics_values_sport_enabled"

    assert props.get(name) == (name, False)


def test_preference_value_wildcard_has_no_value_when_the_preference_is_absent() -> None:
    props = flat(purpose("newsletter", values={"topics": {"value": "sport"}}))

    assert props.get("consents_purposes_newsletter_preferences_format_values_html_enabled") is None
    assert props.get("consents_purposes_ads_preferences_topics_values_sport_enabled") is None


def test_preference_values_count_even_when_enabled_is_null() -> None:
    props = flat(purpose("newsletter", None, values={"frequency": {"value": "weekly"}}))

    assert props.get("consents_purposes_newsletter_values_frequency_value") == (
        "consents_purposes_newsletter_values_frequency_value",
        "weekly",
    )
    assert props.get("consents_purposes_newsletter_enabled") is None


def test_channel_enabled_true_false_and_null() -> None:
    props = flat(
        channels=[
            {"id": "email", "enabled": True},
            {"id": "sms", "enabled": False},
            {"id": "push", "enabled": None},
        ]
    )

    assert props.get("consents_channels_email_enabled") == ("consents_channels_email_enabled", True)
    assert props.get("consents_channels_sms_enabled") == ("consents_channels_sms_enabled", False)
    assert props.get("consents_channels_push_enabled") is None


def test_vendors_produce_no_properties() -> None:
    props = properties({"vendors": {"enabled": ["google"], "disabled": ["x"]}})

    assert list(props.items()) == []
    assert props.get("consents_vendors_enabled") is None


def test_items_lists_every_property_with_a_value_by_canonical_name() -> None:
    props = flat(
        purpose("newsletter", True, enabled_li=False, values={"topics": {"value": "a, ,b,"}}),
        purpose("ads", None),
        channels=[{"id": "email", "enabled": False}],
    )

    assert dict(props.items()) == {
        "consents_purposes_newsletter_enabled": True,
        "consents_purposes_newsletter_enabled_li": False,
        "consents_purposes_newsletter_values_topics_value": "a, ,b,",
        "consents_purposes_newsletter_preferences_topics_values_a_enabled": True,
        "consents_purposes_newsletter_preferences_topics_values_b_enabled": True,
        "consents_channels_email_enabled": False,
    }


def test_no_consents_means_no_properties() -> None:
    props = properties(None)

    assert list(props.items()) == []
    assert props.get("consents_purposes_newsletter_enabled") is None


def test_unknown_or_partial_names_have_no_value() -> None:
    props = flat(purpose("newsletter"))

    for name in ("consents_purposes_newsletter", "newsletter", "", "consents__purposes"):
        assert props.get(name) is None


# --- "__" spellings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "canonical", "value"),
    [
        ("consents__purposes__newsletter__enabled", "consents_purposes_newsletter_enabled", True),
        ("consents_purposes__newsletter_enabled", "consents_purposes_newsletter_enabled", True),
        (
            "consents__purposes__newsletter__enabled_li",
            "consents_purposes_newsletter_enabled_li",
            False,
        ),
        (
            "consents__purposes_newsletter__values__topics_value",
            "consents_purposes_newsletter_values_topics_value",
            "sport",
        ),
        (
            "consents__purposes__newsletter__preferences__topics__values__sport__enabled",
            "consents_purposes_newsletter_preferences_topics_values_sport_enabled",
            True,
        ),
        (
            "consents_purposes__newsletter_preferences__topics_values__news__enabled",
            "consents_purposes_newsletter_preferences_topics_values_news_enabled",
            False,
        ),
        ("consents__channels__email__enabled", "consents_channels_email_enabled", True),
    ],
)
def test_double_underscore_and_mixed_spellings_name_the_same_property(
    spelling: str, canonical: str, value: bool | str
) -> None:
    props = flat(
        purpose("newsletter", True, enabled_li=False, values={"topics": {"value": "sport"}}),
        channels=[{"id": "email", "enabled": True}],
    )

    assert props.get(spelling) == (canonical, value)


def test_enabled_li_is_one_part_so_it_cannot_be_split_by_a_separator() -> None:
    props = flat(purpose("newsletter", enabled_li=True))

    assert props.get("consents__purposes__newsletter__enabled__li") is None


def test_a_triple_underscore_is_not_a_separator() -> None:
    props = flat(purpose("newsletter"))

    assert props.get("consents___purposes_newsletter_enabled") is None


# --- Ids with underscores -------------------------------------------------------------


def test_an_id_with_underscores_is_looked_up_whole() -> None:
    props = flat(purpose("geolocation_data", False))

    assert props.get("consents_purposes_geolocation_data_enabled") == (
        "consents_purposes_geolocation_data_enabled",
        False,
    )
    assert props.get("consents__purposes__geolocation_data__enabled") == (
        "consents_purposes_geolocation_data_enabled",
        False,
    )


def test_an_underscore_inside_an_id_is_not_a_separator_so_it_cannot_be_doubled() -> None:
    props = flat(purpose("geolocation_data", False))

    assert props.get("consents__purposes__geolocation__data__enabled") is None


def test_an_id_that_prefixes_another_never_takes_the_other_ones_value() -> None:
    props = flat(purpose("news", True), purpose("news_letter", False))

    assert props.get("consents_purposes_news_enabled") == ("consents_purposes_news_enabled", True)
    assert props.get("consents_purposes_news_letter_enabled") == (
        "consents_purposes_news_letter_enabled",
        False,
    )
    assert props.get("consents__purposes__news_letter__enabled") == (
        "consents_purposes_news_letter_enabled",
        False,
    )


def test_a_shorter_id_absent_from_the_payload_has_no_value() -> None:
    props = flat(purpose("news_letter", False))

    assert props.get("consents_purposes_news_enabled") is None
    assert props.get("consents__purposes__news__enabled") is None


def test_an_id_containing_a_double_underscore_keeps_it_in_the_canonical_name() -> None:
    props = flat(purpose("a__b", True))

    assert props.get("consents_purposes_a__b_enabled") == ("consents_purposes_a__b_enabled", True)
    assert props.get("consents__purposes__a__b__enabled") == (
        "consents_purposes_a__b_enabled",
        True,
    )


def test_preference_and_value_ids_with_underscores() -> None:
    props = flat(
        purpose("geolocation_data", values={"delivery_mode": {"value": "daily_digest,instant"}})
    )
    prefix = "consents_purposes_geolocation_data_preferences_delivery_mode_values"

    assert props.get(f"{prefix}_daily_digest_enabled") == (f"{prefix}_daily_digest_enabled", True)
    assert props.get(f"{prefix}_weekly_digest_enabled") == (
        f"{prefix}_weekly_digest_enabled",
        False,
    )
    spelled = (
        "consents__purposes__geolocation_data__preferences__delivery_mode__values"
        "__weekly_digest__enabled"
    )
    assert props.get(spelled) == (f"{prefix}_weekly_digest_enabled", False)


# --- The six event types --------------------------------------------------------------


def test_event_created_example_propagates_the_choices_it_carries() -> None:
    event = parse_event(example("event-created.json"))

    assert event.type == "event.created"
    assert event.tenant == "acme"
    assert event.user == "jane.doe@example.com"
    assert event.entity_id == "0a6f1c1e-2c4e-4f0e-8a57-6f1b0d3e9a01"
    assert event.event_key == (
        "event.created:0a6f1c1e-2c4e-4f0e-8a57-6f1b0d3e9a01:2026-11-20T09:15:02.000Z"
    )
    assert event.ordering == OrderingKey(timestamp_us=1_795_166_102_000_000, version=None)
    assert event.status == "confirmed"
    assert event.regulation == "gdpr"
    assert event.skip_reason is None
    assert event.resolve("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        True,
    )
    assert event.resolve("consents_purposes_product_updates_enabled") == (
        "consents_purposes_product_updates_enabled",
        False,
    )
    assert event.resolve("consents_purposes_newsletter_values_frequency_value") == (
        "consents_purposes_newsletter_values_frequency_value",
        "weekly",
    )


def test_event_created_does_not_propagate_purposes_it_does_not_name() -> None:
    event = parse_event(envelope("event.created", entity=consent_event()))

    assert event.resolve("consents_purposes_ads_enabled") is None


def test_event_created_without_status_counts_as_confirmed() -> None:
    event = parse_event(envelope("event.created", entity=without(consent_event(), "status")))

    assert event.status == "confirmed"
    assert event.skip_reason is None
    assert event.resolve("consents_purposes_newsletter_enabled") is not None


def test_pending_event_is_not_propagated() -> None:
    event = parse_event(envelope("event.created", entity=consent_event(status="pending_approval")))

    assert event.status == "pending_approval"
    assert event.skip_reason is SkipReason.PENDING
    assert event.resolve("consents_purposes_newsletter_enabled") is None


def test_confirming_a_pending_event_propagates_new_entity_under_a_new_key() -> None:
    pending = consent_event(status="pending_approval", updated_at=EARLIER)
    confirmed = consent_event(
        status="confirmed",
        updated_at=LATER,
        consents={"purposes": [purpose("newsletter", False)]},
    )
    created = parse_event(envelope("event.created", entity=pending))

    updated = parse_event(change("event.updated", pending, confirmed))

    assert updated.skip_reason is None
    assert updated.status == "confirmed"
    assert updated.resolve("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        False,
    )
    assert updated.entity_id == created.entity_id
    assert updated.event_key == f"event.updated:ev-1:{LATER}"
    assert updated.event_key != created.event_key
    assert updated.ordering.newer_than(created.ordering)


def test_event_updated_to_a_pending_status_is_not_propagated() -> None:
    payload = change("event.updated", consent_event(), consent_event(status="pending_approval"))

    event = parse_event(payload)

    assert event.skip_reason is SkipReason.PENDING
    assert event.resolve("consents_purposes_newsletter_enabled") is None


def test_a_deleted_consent_event_is_accepted_and_skipped() -> None:
    event = parse_event(envelope("event.deleted", entity=consent_event()))

    assert event.type == "event.deleted"
    assert event.tenant == "acme"
    assert event.user == "jane@example.com"
    assert event.skip_reason is SkipReason.UNSUPPORTED_TYPE
    assert not event.erasure
    assert event.resolve("consents_purposes_newsletter_enabled") is None


def test_a_deleted_user_is_an_erasure_that_propagates_no_property() -> None:
    event = parse_event(envelope("user.deleted", entity=user()))

    assert event.user == "jane@example.com"
    assert event.erasure and event.skip_reason is None
    assert event.resolve("consents_purposes_newsletter_enabled") is None


def test_a_deleted_pending_event_is_skipped_for_its_type() -> None:
    entity = consent_event(status="pending_approval")

    event = parse_event(envelope("event.deleted", entity=entity))

    assert event.skip_reason is SkipReason.UNSUPPORTED_TYPE


def test_user_created_propagates_the_full_status() -> None:
    entity = user(
        version=3,
        consents={
            "purposes": [purpose("newsletter", True), purpose("ads", False)],
            "channels": [{"id": "email", "enabled": True}],
        },
    )

    event = parse_event(envelope("user.created", entity=entity))

    assert event.user == "jane@example.com"
    assert event.entity_id == "u-1"
    assert event.ordering.version == 3
    assert event.status == "confirmed"
    assert event.skip_reason is None
    resolved = {
        name: event.resolve(name)
        for name in (
            "consents_purposes_newsletter_enabled",
            "consents_purposes_ads_enabled",
            "consents_channels_email_enabled",
        )
    }
    assert resolved == {
        "consents_purposes_newsletter_enabled": ("consents_purposes_newsletter_enabled", True),
        "consents_purposes_ads_enabled": ("consents_purposes_ads_enabled", False),
        "consents_channels_email_enabled": ("consents_channels_email_enabled", True),
    }


def test_user_updated_example_sends_only_what_changed() -> None:
    event = parse_event(example("user-updated.json"))

    assert event.type == "user.updated"
    assert event.user == "jane.doe@example.com"
    assert event.ordering.version == 5
    assert event.event_key == (
        "user.updated:d7e1c6a4-58b1-4f0c-9a55-0c2b7b8e4f10:2026-11-21T18:02:44.000Z"
    )
    assert event.resolve("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        False,
    )
    assert event.resolve("consents_purposes_email_optout_enabled") == (
        "consents_purposes_email_optout_enabled",
        True,
    )
    assert event.resolve("consents_purposes_product_updates_enabled") is None


def test_user_updated_sends_a_value_the_old_entity_did_not_have() -> None:
    old = user(consents={"purposes": [purpose("newsletter", None)]})
    new = user(version=2, consents={"purposes": [purpose("newsletter", True), purpose("ads")]})

    event = parse_event(change("user.updated", old, new))

    assert event.resolve("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        True,
    )
    assert event.resolve("consents_purposes_ads_enabled") == (
        "consents_purposes_ads_enabled",
        True,
    )


def test_user_updated_writes_nothing_when_a_value_becomes_null_or_absent() -> None:
    old = user(consents={"purposes": [purpose("newsletter", True), purpose("ads", False)]})
    new = user(version=2, consents={"purposes": [purpose("newsletter", None)]})

    event = parse_event(change("user.updated", old, new))

    assert event.resolve("consents_purposes_newsletter_enabled") is None
    assert event.resolve("consents_purposes_ads_enabled") is None


def test_user_updated_compares_preference_values_too() -> None:
    old = user(consents={"purposes": [purpose("nl", values={"topics": {"value": "a,b"}})]})
    new = user(version=2, consents={"purposes": [purpose("nl", values={"topics": {"value": "b"}})]})
    prefix = "consents_purposes_nl_preferences_topics_values"

    event = parse_event(change("user.updated", old, new))

    assert event.resolve(f"{prefix}_a_enabled") == (f"{prefix}_a_enabled", False)
    assert event.resolve(f"{prefix}_b_enabled") is None
    assert event.resolve(f"{prefix}_c_enabled") is None  # false before and after
    assert event.resolve("consents_purposes_nl_values_topics_value") == (
        "consents_purposes_nl_values_topics_value",
        "b",
    )


def test_updated_types_take_ids_and_timestamp_from_new_entity() -> None:
    old = user(updated_at=EARLIER, version=1)
    new = user(updated_at=LATER, version=2)

    event = parse_event(change("user.updated", old, new))

    assert event.event_key == f"user.updated:u-1:{LATER}"
    assert event.ordering == OrderingKey(timestamp_us=1_795_284_164_000_000, version=2)


def test_unknown_fields_are_ignored() -> None:
    payload = envelope("event.created", entity=consent_event(brand_new_field={"x": 1}))
    payload["delivery_id"] = "d-1"
    payload["parameters"]["entity"]["consents"]["vendors"] = {"enabled": ["google"]}

    event = parse_event(payload)

    assert event.skip_reason is None


def test_every_event_type_is_listed() -> None:
    assert EVENT_TYPES == (
        "event.created",
        "event.updated",
        "event.deleted",
        "user.created",
        "user.updated",
        "user.deleted",
    )


# --- Regulation -----------------------------------------------------------------------


def test_regulation_comes_from_the_entity_first() -> None:
    payload = envelope("event.created", entity=consent_event(regulation="cpra"))
    payload["regulation"] = "gdpr"

    assert parse_event(payload).regulation == "cpra"


def test_regulation_falls_back_to_the_envelope() -> None:
    payload = envelope("user.created", entity=user())
    payload["regulation"] = "gdpr"

    assert parse_event(payload).regulation == "gdpr"


def test_an_event_naming_no_regulation_has_none() -> None:
    assert parse_event(envelope("user.created", entity=user())).regulation is None


# --- Ordering -------------------------------------------------------------------------


def test_between_user_payloads_the_higher_version_wins_over_a_later_timestamp() -> None:
    older_clock_newer_version = OrderingKey(timestamp_us=100, version=5)
    newer_clock_older_version = OrderingKey(timestamp_us=200, version=4)

    assert older_clock_newer_version.newer_than(newer_clock_older_version)
    assert not newer_clock_older_version.newer_than(older_clock_newer_version)


def test_equal_versions_fall_back_to_timestamps() -> None:
    assert OrderingKey(200, 5).newer_than(OrderingKey(100, 5))
    assert not OrderingKey(100, 5).newer_than(OrderingKey(200, 5))


def test_without_two_versions_the_later_timestamp_wins() -> None:
    consent = OrderingKey(timestamp_us=200, version=None)
    user_payload = OrderingKey(timestamp_us=100, version=9)

    assert consent.newer_than(user_payload)
    assert not user_payload.newer_than(consent)


def test_a_version_far_ahead_does_not_outrank_a_later_change() -> None:
    forged = OrderingKey(timestamp_us=100, version=10**30)
    later_opt_out = OrderingKey(timestamp_us=200, version=8)

    assert later_opt_out.newer_than(forged)
    assert not forged.newer_than(later_opt_out)


_versions = st.integers(min_value=0, max_value=MAX_VERSION)
_times = st.integers(min_value=0, max_value=2**62)


@given(known=_versions, forged=_versions, forged_at=_times, known_at=_times)
def test_no_version_makes_more_than_a_step_of_later_changes_stale(
    known: int, forged: int, forged_at: int, known_at: int
) -> None:
    """However far ahead one event's version is, the person's own next changes (each a
    version up, each later than everything before) outrank it within MAX_VERSION_STEP + 1
    changes."""
    stored = OrderingKey(forged_at, forged)
    start = max(forged_at, known_at)
    for stale in range(MAX_VERSION_STEP + 1):
        change = OrderingKey(start + stale + 1, known + stale + 1)
        if change.newer_than(stored):
            break
    else:
        pytest.fail(f"{MAX_VERSION_STEP + 1} later changes all stale")


@given(a=_versions, b=_versions, a_at=_times, b_at=_times)
def test_of_two_different_keys_at_most_one_is_newer(a: int, b: int, a_at: int, b_at: int) -> None:
    first, second = OrderingKey(a_at, a), OrderingKey(b_at, b)
    assert not (first.newer_than(second) and second.newer_than(first))


@pytest.mark.parametrize("version", [None, 3])
def test_an_exact_tie_is_not_newer(version: int | None) -> None:
    key = OrderingKey(timestamp_us=100, version=version)

    assert not key.newer_than(OrderingKey(timestamp_us=100, version=version))


def test_timestamps_are_compared_in_utc_to_the_microsecond() -> None:
    def ordering(updated_at: str) -> OrderingKey:
        entity = consent_event(updated_at=updated_at)
        return parse_event(envelope("event.created", entity=entity)).ordering

    utc = ordering(EARLIER)

    assert ordering("2026-11-20T11:15:02+02:00") == utc
    assert ordering("2026-11-20T09:15:02") == utc  # no offset: read as UTC
    assert ordering("2026-11-20T09:15:02.000001Z").newer_than(utc)


def test_created_at_is_used_when_updated_at_is_absent() -> None:
    entity = without(consent_event(created_at=LATER), "updated_at")

    event = parse_event(envelope("event.created", entity=entity))

    assert event.event_key == f"event.created:ev-1:{LATER}"
    assert event.ordering.timestamp_us == 1_795_284_164_000_000


# --- Idempotency key ------------------------------------------------------------------


def test_the_same_payload_always_gets_the_same_key() -> None:
    payload = example("event-created.json")

    assert parse_event(payload).event_key == parse_event(copy.deepcopy(payload)).event_key


def test_the_key_keeps_updated_at_exactly_as_given() -> None:
    entity = consent_event(updated_at="2026-11-20T11:15:02+02:00")

    event = parse_event(envelope("event.created", entity=entity))

    assert event.event_key == "event.created:ev-1:2026-11-20T11:15:02+02:00"


def test_events_parsed_from_one_payload_are_equal() -> None:
    payload = example("user-updated.json")

    first: PreferenceEvent = parse_event(payload)

    assert first == parse_event(copy.deepcopy(payload))


# --- Refusals -------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [[], "event", None, 3])
def test_a_payload_that_is_not_an_object_is_refused(payload: object) -> None:
    assert "must be a JSON object" in refusal(payload)


def test_an_unknown_type_is_refused() -> None:
    message = refusal(envelope("consent.changed", entity=consent_event()))

    assert message.startswith("type: must be one of event.created, event.updated")
    assert "'consent.changed'" in message


def test_a_missing_type_is_refused() -> None:
    assert refusal({"parameters": {"entity": consent_event()}}) == "type: field required"


def test_missing_parameters_are_refused() -> None:
    assert refusal({"type": "user.created"}) == "parameters: field required"


def test_an_updated_type_without_new_entity_is_refused() -> None:
    payload = envelope("user.updated", old_entity=user())

    assert refusal(payload) == "parameters.new_entity: field required"


@pytest.mark.parametrize(
    ("type", "entity", "expected"),
    [
        (
            "event.created",
            without(consent_event(), "organization_id"),
            "parameters.entity.organization_id: field required",
        ),
        (
            "event.created",
            consent_event(user={"id": "u-1"}),
            "parameters.entity.user.organization_user_id: field required",
        ),
        (
            "event.created",
            without(consent_event(), "user"),
            "parameters.entity.user: field required",
        ),
        (
            "user.created",
            without(user(), "organization_user_id"),
            "parameters.entity.organization_user_id: field required",
        ),
        (
            "user.created",
            user(organization_user_id=""),
            "parameters.entity.organization_user_id: string should have at least 1 character",
        ),
        (
            "event.created",
            without(consent_event(), "id"),
            "parameters.entity.id: field required",
        ),
        (
            "event.created",
            without(consent_event(), "updated_at", "created_at"),
            "parameters.entity: needs updated_at or created_at",
        ),
        (
            "event.created",
            consent_event(updated_at="yesterday"),
            "parameters.entity.updated_at: not an ISO-8601 timestamp",
        ),
        (
            "event.created",
            consent_event(updated_at="9999-12-31T23:59:59-23:59"),
            "parameters.entity.updated_at: outside the years 1 to 9999 in UTC",
        ),
        (
            "event.created",
            consent_event(created_at="0001-01-01T00:00:00+23:59"),
            "parameters.entity.created_at: outside the years 1 to 9999 in UTC",
        ),
        (
            "event.created",
            consent_event(created_at=1732094102),
            "parameters.entity.created_at: input should be a valid string",
        ),
        (
            "user.created",
            user(version="5"),
            "parameters.entity.version: input should be a valid integer",
        ),
        (
            "user.created",
            user(version=5.5),
            "parameters.entity.version: input should be a valid integer",
        ),
        (
            "user.created",
            user(organization_user_id="u" * 513),
            "parameters.entity.organization_user_id: string should have at most 512 characters",
        ),
        (
            "event.created",
            consent_event(organization_id="t" * 1024),
            "parameters.entity.organization_id: string should have at most 512 characters",
        ),
        (
            "user.created",
            user(version=10**30),
            "parameters.entity.version: input should be less than or equal to 9007199254740991",
        ),
        (
            "user.created",
            user(version=-1),
            "parameters.entity.version: input should be greater than or equal to 0",
        ),
        (
            "event.created",
            consent_event(status="rejected"),
            "parameters.entity.status: input should be 'confirmed' or 'pending_approval'",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [purpose("newsletter", "true")]}),
            "parameters.entity.consents.purposes.0.enabled: input should be a valid boolean",
        ),
        (
            "event.created",
            consent_event(consents={"channels": [{"id": "email", "enabled": 1}]}),
            "parameters.entity.consents.channels.0.enabled: input should be a valid boolean",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [purpose("nl", values=["weekly"])]}),
            "parameters.entity.consents.purposes.0.values: input should be a valid dictionary",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [purpose("nl", values={"f": "weekly"})]}),
            "parameters.entity.consents.purposes.0.values.f: input should be a valid dictionary",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [purpose("nl", values={"f": {"value": 3}})]}),
            "parameters.entity.consents.purposes.0.values.f.value: input should be a valid string",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [{"enabled": True}]}),
            "parameters.entity.consents.purposes.0.id: field required",
        ),
        (
            "event.created",
            consent_event(consents={"purposes": [purpose("nl"), purpose("nl", False)]}),
            "parameters.entity.consents.purposes: duplicate id 'nl'",
        ),
    ],
)
def test_an_unusable_entity_is_refused_naming_the_field(
    type: str, entity: dict[str, Any], expected: str
) -> None:
    assert refusal(envelope(type, entity=entity)).startswith(expected)


def test_the_refused_input_is_quoted_in_the_message() -> None:
    payload = envelope("user.created", entity=user(version="5"))

    assert "(got '5')" in refusal(payload)


def test_a_huge_refused_input_is_truncated_in_the_message() -> None:
    payload = envelope("user.created", entity=user(version="9" * 100_000))

    assert len(refusal(payload)) < 200


def test_an_update_moving_to_another_tenant_is_refused() -> None:
    payload = change("user.updated", user(), user(organization_id="other"))

    assert refusal(payload) == (
        "parameters.new_entity.organization_id: differs from parameters.old_entity's"
    )


def test_an_update_moving_to_another_person_is_refused_without_naming_them() -> None:
    new = consent_event(user={"id": "u-2", "organization_user_id": "john@example.com"})

    message = refusal(change("event.updated", consent_event(), new))

    assert message.startswith("parameters.new_entity.user.organization_user_id: differs")
    assert "example.com" not in message


def test_invalid_consents_are_refused_naming_the_field() -> None:
    with pytest.raises(
        InvalidEvent, match=r"^parameters\.entity\.consents\.purposes\.0\.enabled: "
    ):
        properties({"purposes": [{"id": "nl", "enabled": "yes"}]})


# --- Size limit -----------------------------------------------------------------------


def test_a_payload_at_the_size_limit_is_accepted_and_one_byte_over_is_refused() -> None:
    payload = example("event-created.json")
    size = len(json.dumps(payload, separators=(",", ":")).encode())

    assert parse_event(payload, max_bytes=size).event_key
    assert refusal(payload, max_bytes=size - 1) == (
        f"event is {size} bytes, larger than the limit of {size - 1}"
    )


def test_the_size_limit_counts_utf8_bytes() -> None:
    payload = envelope("event.created", entity=consent_event(metadata={"note": "é" * 100}))
    size = len(json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode())

    assert refusal(payload, max_bytes=size - 1).startswith(f"event is {size} bytes")


def test_without_a_limit_a_large_payload_is_accepted() -> None:
    payload = envelope("event.created", entity=consent_event(metadata={"note": "x" * 1_000_000}))

    assert parse_event(payload).skip_reason is None
