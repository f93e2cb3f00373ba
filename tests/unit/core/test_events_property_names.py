"""The property grammar (worker.core.events.is_property_name): the names a payload can give
a value, checked in work linear in a name's length."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.test_events import flat
from tests.unit.core.test_events_cost import calls
from worker.core.events import is_property_name

_ID = st.text(min_size=1, max_size=12)


# UTF-8 text: an event carrying anything else is refused before it is flattened.
_VALUE_ID = st.text(
    alphabet=st.characters(exclude_characters=",", codec="utf-8"), min_size=1, max_size=8
)


@given(
    purposes=st.lists(
        st.fixed_dictionaries(
            {"id": _ID, "enabled": st.booleans(), "enabled_li": st.booleans()},
            optional={
                "values": st.dictionaries(
                    st.text(max_size=8),
                    st.builds(lambda ids: {"value": ",".join(ids)}, st.lists(_VALUE_ID)),
                    max_size=3,
                )
            },
        ),
        max_size=3,
        unique_by=lambda purpose: purpose["id"],
    ),
    channels=st.lists(
        st.fixed_dictionaries({"id": _ID, "enabled": st.booleans()}),
        max_size=3,
        unique_by=lambda channel: channel["id"],
    ),
)
def test_every_name_a_payload_gives_a_value_is_a_property_name(
    purposes: list[dict[str, Any]], channels: list[dict[str, Any]]
) -> None:
    """The grammar check and the flattening agree: a config can name every property."""
    properties = flat(*purposes, channels=channels)

    for name, _ in properties.items():
        assert is_property_name(name), name
        doubled = name.replace("consents_", "consents__", 1)
        assert is_property_name(doubled), doubled


# The grammar of docs/mappings.md as a regular expression: the specification the linear check
# must agree with (too slow to use: it backtracks in cubic time on long names).
_S = "(?:__|_)"


_SPEC = re.compile(
    f"consents{_S}(?:purposes{_S}.+?{_S}(?:enabled|enabled_li|values{_S}.*?{_S}value"
    f"|preferences{_S}.*?{_S}values{_S}.+?{_S}enabled)|channels{_S}.+?{_S}enabled)",
    re.DOTALL,
)


_WORDS = ["consents", "purposes", "channels", "preferences", "values", "value", "enabled",
          "enabled_li", "li", "p", "x", "_", "__", "___"]  # fmt: skip


@settings(max_examples=1000)
@given(st.lists(st.sampled_from(_WORDS), max_size=12))
def test_the_check_agrees_with_the_grammar(words: list[str]) -> None:
    name = "".join(words)

    assert is_property_name(name) == bool(_SPEC.fullmatch(name)), name


@pytest.mark.parametrize(
    "make",
    [
        lambda n: "consents_purposes_" + "preferences_values_" * n + "x",
        lambda n: "consents__purposes__" + "_preferences__" * n + "_values_x",
        lambda n: "consents_purposes_" + "_" * n + "values_value",
    ],
)
def test_checking_a_name_costs_work_linear_in_its_length(make: Callable[[int], str]) -> None:
    short, long = make(500), make(2000)

    small, large = calls(lambda: is_property_name(short)), calls(lambda: is_property_name(long))

    assert large == small  # a fixed number of str.find/endswith calls, whatever the length
