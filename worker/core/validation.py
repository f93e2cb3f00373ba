"""A pydantic ``ValidationError`` as one line per problem, ``where: what``: the form every
refused input takes (an event, a connector config, a setting).

Each input has its own words, so the caller says how a location is written (an event's
``parameters.entity.id``, a config's ``mappings[0].id``, a setting's
``PREFSYNC_REDIS_URL``) and how a problem reads (an event's quotes the input; a config's
or a setting's never does: it may be a credential).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from pydantic_core import ErrorDetails

#: where a problem is in the input, as pydantic gives it: keys and list indexes
Location = tuple[int | str, ...]


def describe(
    exc: ValidationError,
    where: Callable[[Location], str],
    what: Callable[[ErrorDetails], str],
    *,
    at_most: int | None = None,
) -> list[str]:
    """One line per error of ``exc``, ``where(loc): what(error)`` (only ``what(error)``
    when ``where`` gives nothing); past ``at_most`` errors, a last line says how many
    more there are."""
    errors = exc.errors(include_url=False)
    lines = []
    for error in errors[:at_most]:
        place, problem = where(error["loc"]), what(error)
        lines.append(f"{place}: {problem}" if place else problem)
    if at_most is not None and len(errors) > at_most:
        lines.append(f"and {len(errors) - at_most} more")
    return lines
