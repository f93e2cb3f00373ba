"""The events and connector configs the benchmark sends, built so the fake can time them.

Every event carries its enqueue time as a PMP preference value
(``consents_purposes_bench_values_enqueued_at_value``) which the connector configs map onto
the destination field the fake reads (``bench_enqueued_at`` on Braze,
``BENCH_ENQUEUED_AT`` on Brevo): the fake then knows, for each user it receives, how long
ago that event was enqueued, whatever batching or coalescing happened in between.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.fakes.vendors import BRAZE_STAMP, NEVER_KNOWN_DOMAIN

STAMP_PROPERTY = "consents_purposes_bench_values_enqueued_at_value"
NEWSLETTER_PROPERTY = "consents_purposes_newsletter_enabled"
BRAZE_KEY = "bench-braze-rest-key-0001"
BREVO_KEY = "xkeysib-bench-brevo-key-0002"


def braze_config(server: str) -> dict[str, Any]:
    return {
        "type_id": "braze",
        "authentication": {"api_key": BRAZE_KEY, "server": server},
        "properties": {},
        "mappings": [
            {"id": "OPTED_IN", "value": NEWSLETTER_PROPERTY},
            {"id": BRAZE_STAMP, "value": STAMP_PROPERTY},
        ],
        # Upsert: with _update_existing_only Braze would ignore users it does not know;
        # the benchmark's users are all new.
        "upsert_mode": True,
    }


def brevo_config(upsert: bool = True) -> dict[str, Any]:
    return {
        "type_id": "sendinblue",
        "upsert_mode": upsert,
        "config": {
            "api_key": BREVO_KEY,
            "properties": [
                {"id": "EMAIL_CAMPAIGNS_SUBSCRIBED", "value": NEWSLETTER_PROPERTY},
                {"id": BRAZE_STAMP, "value": STAMP_PROPERTY},  # the worker upper-cases it
            ],
        },
    }


class EventFactory:
    """Consent events of one run: ``make(i, stamp)`` is the i-th, enqueued at ``stamp``.

    Event i is about user ``i % users`` (named by an email address with ``emails``; every
    ``unknown_every``-th one at the domain the fake never knows); ``updated_at`` grows by a
    microsecond per event so a user's later events are always newer (none is skipped as
    stale for its order), and entity ids are unique per run so none is a duplicate of an
    earlier run's.
    """

    def __init__(
        self,
        tenant: str,
        run: str,
        users: int | None,
        emails: bool = False,
        unknown_every: int | None = None,
    ) -> None:
        self.tenant = tenant
        self.run = run
        self.users = users  # None: a new user per event
        self.emails = emails  # users named by an email address
        self.unknown_every = unknown_every  # every n-th user at the fake's unknown domain
        self.start = datetime.now(UTC)

    def user(self, i: int) -> str:
        number = i if self.users is None else i % self.users
        if not self.emails:
            return f"{self.run}-u{number}"
        unknown = self.unknown_every and number % self.unknown_every == self.unknown_every - 1
        return f"{self.run}-u{number}@{NEVER_KNOWN_DOMAIN if unknown else 'bench.example'}"

    def make(self, i: int, stamp: float) -> dict[str, Any]:
        updated_at = (self.start + timedelta(microseconds=i)).isoformat(timespec="microseconds")
        return {
            "type": "event.created",
            "parameters": {
                "entity": {
                    "id": f"{self.run}-e{i}",
                    "organization_id": self.tenant,
                    "created_at": updated_at,
                    "updated_at": updated_at,
                    "status": "confirmed",
                    "user": {"organization_user_id": self.user(i)},
                    "consents": {
                        "purposes": [
                            {"id": "newsletter", "enabled": i % 2 == 0},
                            {"id": "bench", "values": {"enqueued_at": {"value": f"{stamp:.6f}"}}},
                        ]
                    },
                }
            },
        }


def stamp_of(payload: dict[str, Any]) -> str:
    """The enqueue time an event carries (the naive baseline forwards it as is)."""
    for purpose in payload["parameters"]["entity"]["consents"]["purposes"]:
        if purpose["id"] == "bench":
            return purpose["values"]["enqueued_at"]["value"]
    raise KeyError("bench stamp")
