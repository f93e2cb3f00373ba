"""Reading events from bytes a producer sent: one JSON object, a JSON array or JSON Lines.

Shared by `prefsync enqueue` and the HTTP ingress, so both refuse the same input with the
same message ("item 3: ...", "line 1: not valid JSON (...)").
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any


def read_payloads(data: bytes) -> Iterator[tuple[str, Any, str | None]]:
    """Yield (label, payload, error) for each event of a JSON object, JSON array or
    JSON Lines input; labels are "item N" (array) or "line N" (JSON Lines), 1-based.

    JSON Lines are judged one line at a time, so a line that is not UTF-8 or not JSON
    costs that line only."""
    # Undecodable bytes become lone surrogates, which valid UTF-8 text never holds, so a
    # line can still tell that it had one, and where.
    text = data.decode("utf-8", errors="surrogateescape")
    stripped = text.strip()
    if not stripped:
        yield "input", None, "no event found (empty input)"
        return
    one_line = "\n" not in stripped
    try:
        document = json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        if one_line:
            yield "line 1", None, _utf8_error(stripped) or _json_error(exc)
            return
        document = _JSON_LINES
    if document is not _JSON_LINES:
        if error := _utf8_error(stripped):
            yield "line 1" if one_line else "input", None, error
        elif isinstance(document, list):
            for number, item in enumerate(document, start=1):
                yield f"item {number}", item, None
        else:
            yield "event", document, None
        return
    # Only "\n" ends a line: str.splitlines() also splits at U+2028, U+0085 and other
    # characters a JSON string may hold as they are, which would cut one event in two.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if error := _utf8_error(line):
            yield f"line {number}", None, error
            continue
        try:
            yield f"line {number}", json.loads(line), None
        except (ValueError, RecursionError) as exc:
            yield f"line {number}", None, _json_error(exc)


_JSON_LINES = object()  # the input is not one JSON document


def _json_error(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    # An integer longer than Python converts (sys.get_int_max_str_digits()).
    return f"not valid JSON ({str(exc).split(';')[0]})"


_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape made of a bad byte


def _utf8_error(text: str) -> str | None:
    if bad := _UNDECODED.search(text):
        offset = len(text[: bad.start()].encode("utf-8", errors="surrogateescape"))
        return f"not UTF-8 text (byte {offset})"
    return None
