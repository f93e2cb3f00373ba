"""The ingress under abuse, end to end: a real ``prefsync serve`` and Redis, attacked from
loopback (bounded in sockets, bytes and time). Each test performs the attack or sends the
input, and checks that the ingress refuses it cheaply and keeps answering everyone else
(docs/security.md, "The ingress under abuse")."""

from __future__ import annotations

import json

import requests

from tests.e2e.helpers import consent_event
from tests.e2e.test_ingress import add_credential, nothing_enqueued, post

# Moments an offset carries past year 9999 or before year 1 once read in UTC.
OUT_OF_RANGE = ("9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59")


def test_a_timestamp_out_of_range_is_a_400_with_the_line_enqueue_prints(
    prefsync_env, redis_server, start_ingress, run_cli
):
    # Given an acme credential and a running ingress,
    client_id, secret = add_credential(run_cli, prefsync_env)
    ingress = start_ingress(prefsync_env)
    basic = requests.auth._basic_auth_str(client_id, secret)

    for moment in OUT_OF_RANGE:
        for field in ("updated_at", "created_at"):
            event = consent_event("e-1", "john@example.com", "2026-11-21T09:00:00Z", {"n": True})
            event["parameters"]["entity"][field] = moment
            if field == "created_at":
                del event["parameters"]["entity"]["updated_at"]
            # When the event is posted and given to `prefsync enqueue`,
            answer = post(ingress.url, event, basic)
            cli = run_cli(prefsync_env, "enqueue", "-", input=json.dumps(event))

            # then both refuse it with the same one line naming the field: no 500 (which
            # the PMP would retry forever), no traceback.
            assert answer.status_code == 400, (moment, field, answer.text)
            error = answer.json()["error"]
            assert field in error and "\n" not in error
            assert cli.returncode == 1, cli.stderr
            assert "Traceback" not in cli.stderr
            assert cli.stderr.strip() == error
    nothing_enqueued(redis_server)
