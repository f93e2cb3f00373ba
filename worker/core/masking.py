"""How a credential is shown to operators, and a destination's message kept without the
person it names."""

import re
from urllib.parse import quote


def mask(secret: str) -> str:
    """Show a credential the way operators may see it: only its last 4 characters."""
    tail = secret[-4:] if len(secret) >= 12 else ""
    return f"…{tail}" if tail else "…"


PERSON = "[user]"


def without_person(text: str, user: str) -> str:
    """``text`` (a destination's message) with ``user``'s id, in any letter case and as a
    URL path would carry it, replaced by ``PERSON``: destinations echo the id they were
    sent ("bad external id dora@example.com"), and what prefsync keeps or logs must not
    name a person it may have to forget."""
    # An id with no letter or digit ("..", refused before any call) names nobody, and
    # would cut prefsync's own words out of the message that explains its refusal.
    if not text or not any(char.isalnum() for char in user):
        return text
    forms = sorted({user, quote(user, safe="")}, key=len, reverse=True)
    pattern = "|".join(re.escape(form) for form in forms)
    # Whole ids only: a short id ("poison") is not cut out of other words ("poisoned").
    return re.sub(rf"(?<!\w)(?:{pattern})(?!\w)", PERSON, text, flags=re.IGNORECASE)
