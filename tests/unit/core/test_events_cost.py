"""Resolving mappings costs time linear in the payload's size, whatever its shape.

Work is counted, not timed: every Python and C function call made while parsing the event
and resolving the mappings (``sys.setprofile``), for a payload of n preference values and
one of 4n. A look-up that tried each property in turn (as one did, compiling a regular
expression per property) costs work proportional to n per mapping.
"""

from __future__ import annotations

import gc
import re
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.core.test_events import flat
from worker.core.events import FlatProperties, PreferenceEvent, parse_event

MAPPINGS = [
    "consents_purposes_p_enabled",
    "consents__purposes__p__enabled",
    "consents_purposes_p_preferences_pref_values_absent_enabled",
    "consents__purposes__p__preferences__pref__values__v5__enabled",
    "consents__purposes__p__preferences__pref__values__absent__enabled",
    "consents__purposes__p__enabld",
    "consents_purposes_q_preferences_pref_values_v1_enabled",
]


def payload(values: list[str], *, preferences: int = 1) -> dict[str, Any]:
    listed = ",".join(values)
    return {
        "type": "event.created",
        "parameters": {
            "entity": {
                "id": "e-1",
                "organization_id": "acme",
                "updated_at": "2026-01-01T00:00:00Z",
                "user": {"organization_user_id": "u-1"},
                "consents": {
                    "purposes": [
                        {
                            "id": "p",
                            "enabled": True,
                            "values": {
                                ("pref" if i == 0 else f"pref{i}"): {"value": listed}
                                for i in range(preferences)
                            },
                        }
                    ]
                },
            }
        },
    }


def calls(work: Callable[[], object]) -> int:
    """How many function calls (Python and C) ``work`` makes."""
    count = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    # A collection in the middle could run callbacks (weak references, finalizers) of
    # objects other tests left behind, and count their calls.
    gc.collect()
    gc.disable()
    sys.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
        gc.enable()
    return count


def resolve_all(event: PreferenceEvent) -> None:
    for name in MAPPINGS:
        event.resolve(name)


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: payload([f"v{i}" for i in range(n)]),
        # Value ids that differ only in their runs of "_": one collapsed name for many.
        lambda n: payload([f"v{'_' * (i % 7 + 1)}{i}" for i in range(n)]),
        lambda n: payload(["v1"], preferences=n),
    ],
    ids=["many values", "underscore runs", "many preferences"],
)
def test_a_look_up_costs_the_same_whatever_the_payload_size(shape: Callable) -> None:
    small, large = parse_event(shape(500)), parse_event(shape(2000))
    # A first look-up may build an index of the payload (linear, once per event).
    resolve_all(small)
    resolve_all(large)

    assert calls(lambda: resolve_all(large)) == calls(lambda: resolve_all(small))


@pytest.mark.parametrize(
    "shape",
    [
        lambda n: payload([f"v{i}" for i in range(n)]),
        lambda n: payload([f"v{'_' * (i % 7 + 1)}{i}" for i in range(n)]),
        lambda n: payload(["v1"], preferences=n),
    ],
    ids=["many values", "underscore runs", "many preferences"],
)
def test_parsing_and_resolving_costs_work_linear_in_the_payload(shape: Callable) -> None:
    def work(n: int) -> int:
        raw = shape(n)
        return calls(lambda: resolve_all(parse_event(raw)))

    small, large = work(1000), work(4000)

    assert large <= 4.5 * small


def test_results_are_unchanged_by_the_indexes() -> None:
    event = parse_event(payload(["v1", "v5", "w_x", "y__z"]))

    assert event.resolve("consents__purposes__p__enabled") == ("consents_purposes_p_enabled", True)
    assert event.resolve("consents__purposes__p__preferences__pref__values__v5__enabled") == (
        "consents_purposes_p_preferences_pref_values_v5_enabled",
        True,
    )
    assert event.resolve("consents_purposes_p_preferences_pref_values_w__x_enabled") == (
        "consents_purposes_p_preferences_pref_values_w__x_enabled",
        False,
    )
    assert event.resolve("consents__purposes__p__preferences__pref__values__y__z__enabled") == (
        "consents_purposes_p_preferences_pref_values_y__z_enabled",
        True,
    )
    assert event.resolve("consents__purposes__p__preferences__pref__values__absent__enabled") == (
        "consents_purposes_p_preferences_pref_values_absent_enabled",
        False,
    )
    assert event.resolve("consents__purposes__p__preferences__other__values__v1__enabled") is None
    assert event.resolve("consents__purposes__p__enabld") is None


# The look-up as it was (every property tried in turn, a regular expression each): the
# reference the indexed look-up must agree with, on names and ids full of "_".
_S = "(?:__|_)"


def _reference_get(properties: FlatProperties, name: str) -> tuple[str, Any] | None:
    values, parts = properties._values, properties._parts
    if name in values:
        return name, values[name]
    if "__" in name:
        for canonical, its_parts in parts.items():
            if re.fullmatch(_S.join(re.escape(part) for part in its_parts), name):
                return canonical, values[canonical]
    for its_parts in parts.values():
        if its_parts[3:4] != ("values",) or its_parts[-1] != "value":
            continue
        purpose, preference = its_parts[2], its_parts[4]
        head = ("consents", "purposes", purpose, "preferences", preference, "values")
        pattern = _S.join(re.escape(part) for part in head) + f"{_S}(?P<v>.+?){_S}enabled"
        if match := re.fullmatch(pattern, name):
            return "_".join((*head, match["v"], "enabled")), False
    return None


_IDS = st.sampled_from(["a", "_a", "a_", "_", "a_b", "a__b", "values", "b"])
_PREFERENCES = st.sampled_from(["", "a", "a_", "_a", "values", "p"])
_SHAPES = [
    ("consents", "purposes", "{p}", "enabled"),
    ("consents", "purposes", "{p}", "values", "{pref}", "value"),
    ("consents", "purposes", "{p}", "preferences", "{pref}", "values", "{v}", "enabled"),
]


@st.composite
def _names(draw: st.DrawFn) -> str:
    """A property name of some shape, its ids and separators drawn ("_" or "__")."""
    shape = draw(st.sampled_from(_SHAPES))
    ids = {"p": draw(_IDS), "pref": draw(_PREFERENCES), "v": draw(_IDS)}
    parts = [part.format(**ids) for part in shape]
    name = parts[0]
    for part in parts[1:]:
        name += draw(st.sampled_from(["_", "__"])) + part
    return name


@settings(max_examples=1500)
@given(
    purpose=_IDS,
    preference=_PREFERENCES,
    chosen=st.lists(_IDS, max_size=3),
    name=_names(),
)
def test_the_indexed_look_up_agrees_with_trying_every_property(
    purpose: str, preference: str, chosen: list[str], name: str
) -> None:
    properties = flat(
        {"id": purpose, "enabled": True, "values": {preference: {"value": ",".join(chosen)}}}
    )
    assert properties.get(name) == _reference_get(properties, name), name
