"""The benchmark's scenarios (the loads of docs/performance.md) and how ``--scale`` shrinks them."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

STEADY_MIN_SECONDS = 5.0  # below that a steady rate has no time to show its latency
BASELINE_FLOOR = 2_000  # fewest events a shrunk naive baseline run gets


@dataclass(frozen=True)
class Scenario:
    name: str
    service: str  # "braze" or "brevo": the one connector of the scenario's tenant
    events: int
    users: int | None  # None: a new user per event; else events cycle over this many users
    rate: float | None = None  # events/s offered at a steady pace; None: as fast as possible
    seconds: float | None = None  # how long a steady scenario offers its rate
    summary: str = ""
    emails: bool = False  # users named by an email address (Brevo batches them), else ids
    unknown_every: int | None = None  # every n-th user is a contact the fake does not know
    upsert: bool = True  # the connector's upsert_mode

    def scaled(self, scale: float) -> Scenario:
        """Shrink the event count by ``scale``. The coalescing scenario keeps its number of
        changes per user (users shrink too); a steady one keeps its rate and shortens,
        but runs at least STEADY_MIN_SECONDS."""
        if scale == 1:
            return self
        if self.rate is not None and self.seconds is not None:
            seconds = max(STEADY_MIN_SECONDS, self.seconds * scale)
            return replace(self, seconds=seconds, events=math.ceil(self.rate * seconds))
        users = None if self.users is None else max(1, round(self.users * scale))
        return replace(self, events=max(1, math.ceil(self.events * scale)), users=users)

    def for_baseline(self, fraction: float) -> Scenario:
        """The naive baseline's size: ``fraction`` of the events, at least BASELINE_FLOOR
        (its rate is steady from a few thousand events on, and at a few hundred events a
        second a full-size baseline would take most of a full run). A steady scenario
        keeps its rate and length."""
        if self.rate is not None:
            return self
        events = min(self.events, max(BASELINE_FLOOR, math.ceil(self.events * fraction)))
        return replace(self, events=events)


SCENARIOS = {
    s.name: s
    for s in (
        Scenario(
            name="braze",
            service="braze",
            events=200_000,
            users=None,
            summary="200,000 events to one Braze connector, one user each",
        ),
        Scenario(
            name="braze-coalesce",
            service="braze",
            events=200_000,
            users=1_000,
            summary="200,000 events to one Braze connector, 1,000 users changing repeatedly",
        ),
        Scenario(
            name="brevo",
            service="brevo",
            events=2_000,
            users=None,
            summary="2,000 events to one Brevo connector under its default limit",
        ),
        Scenario(
            name="brevo-batch",
            service="brevo",
            events=10_000,
            users=None,
            summary="10,000 events to one Brevo connector under its default limit, known "
            "contacts named by email (POST /v3/contacts/batch)",
            emails=True,
            upsert=False,
        ),
        Scenario(
            name="brevo-batch-unknown",
            service="brevo",
            events=10_000,
            users=None,
            summary="as brevo-batch, one contact in 10 unknown to Brevo, upsert off "
            "(skipped:contact_unknown)",
            emails=True,
            unknown_every=10,
            upsert=False,
        ),
        Scenario(
            name="fairness",
            service="braze",
            events=200_000,
            users=None,
            rate=50.0,
            summary="tenant B's live Braze opt-outs at 50/s while tenant A's bulk load of "
            "200,000 events and a Brevo backlog drain (bench/fairness.py)",
        ),
        Scenario(
            name="steady",
            service="braze",
            events=15_000,
            users=None,
            rate=500.0,
            seconds=30.0,
            summary="a steady 500 events/s for 30 s to one Braze connector (latency)",
        ),
    )
}
