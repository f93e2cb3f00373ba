"""NAIVE BASELINE -- not prefsync. The yardstick the benchmark compares prefsync against.

What a first attempt at "send consent events to Braze/Brevo with Celery" looks like: its
own tiny Celery app with default settings, one task per event, one ``requests`` call per
event. No validation, no newest-wins state, no idempotency, no per-user lock, no outbox,
no retries, no audit trail: a 429 or an error is simply lost (the fake counts it).

The HTTP call goes through one ``requests.Session`` per worker process, which keeps its
connection alive as any ``requests`` user would get by default with a session; a
``requests.post`` module call would open a TCP connection per event and measure the
kernel's connection handling rather than the per-event cost of task + call.

The worker runs as ``python -m celery -A bench.naive worker --concurrency=2``, with
``BENCH_NAIVE_BROKER`` (a Redis URL; the runner uses its own redis-server, database 1) and
``BENCH_FAKE_URL`` (the fake's base URL) in its environment.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

import requests
from celery import Celery

from bench.events import BRAZE_KEY, BREVO_KEY, stamp_of
from tests.fakes.vendors import BRAZE_STAMP, BREVO_STAMP

app = Celery("naive_baseline", broker=os.environ.get("BENCH_NAIVE_BROKER", "memory://"))
app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True)

_session: requests.Session | None = None


def _http() -> requests.Session:
    global _session
    if _session is None:  # built in the pool child, after the fork
        _session = requests.Session()
    return _session


def _entity(payload: dict[str, Any]) -> tuple[str, bool]:
    entity = payload["parameters"]["entity"]
    newsletter = next(p for p in entity["consents"]["purposes"] if p["id"] == "newsletter")
    return entity["user"]["organization_user_id"], bool(newsletter["enabled"])


@app.task(name="naive.braze")
def naive_braze(payload: dict[str, Any]) -> int:
    """NAIVE BASELINE: one POST /users/track per event."""
    user, opted_in = _entity(payload)
    body = {
        "attributes": [
            {
                "external_id": user,
                "email_subscribe": "opted_in" if opted_in else "unsubscribed",
                BRAZE_STAMP: stamp_of(payload),
            }
        ]
    }
    answer = _http().post(
        f"{os.environ['BENCH_FAKE_URL']}/users/track",
        json=body,
        headers={"Authorization": f"Bearer {BRAZE_KEY}"},
        timeout=10,
    )
    return answer.status_code


@app.task(name="naive.brevo")
def naive_brevo(payload: dict[str, Any]) -> int:
    """NAIVE BASELINE: one PUT /v3/contacts/{id} per event, whatever the rate limit says."""
    user, opted_in = _entity(payload)
    body = {"emailBlacklisted": not opted_in, "attributes": {BREVO_STAMP: stamp_of(payload)}}
    answer = _http().put(
        f"{os.environ['BENCH_FAKE_URL']}/v3/contacts/{quote(user, safe='')}",
        params={"identifierType": "ext_id"},
        json=body,
        headers={"api-key": BREVO_KEY},
        timeout=10,
    )
    return answer.status_code


def enqueue(task_name: str, payloads: list[dict[str, Any]]) -> None:
    """NAIVE BASELINE producer: one ``apply_async`` per event."""
    task = app.tasks[task_name]
    for payload in payloads:
        task.apply_async(args=[payload])
