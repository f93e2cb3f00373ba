"""``make demo`` (``python -m tests.demo``) end to end: it runs on its own, shows what both
destinations received, the audit trail and the counters, and leaves no process behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_shows_both_destinations_audit_and_stats_and_stops_what_it_started(redis_binary):
    # When the demo runs (redis_binary: fail clearly if redis-server is missing),
    done = subprocess.run(
        [sys.executable, "-m", "tests.demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )

    # then it succeeds, having sent both events through the ingress with a token,
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    out = done.stdout
    assert "POST /oauth/token  -> 200" in out
    assert "POST /webhooks event-created.json  -> 202" in out
    assert "POST /webhooks user-updated.json  -> 202" in out
    assert not re.search(r"ps[st]_[A-Za-z0-9_-]{20,}", out + done.stderr), "a secret was printed"
    # shows Braze's calls (the opt-in first, the unsubscribe second),
    braze = out[out.index("Braze received:") : out.index("Brevo received:")]
    assert braze.count("POST /users/track  -> 201") == 2
    assert braze.index('"email_subscribe": "opted_in"') < braze.index(
        '"email_subscribe": "unsubscribed"'
    )
    assert '"newsletter_frequency": "weekly"' in braze
    # then Brevo's, both on the contact's URL-encoded email,
    brevo = out[out.index("Brevo received:") : out.index("$ prefsync audit acme")]
    put = "PUT /v3/contacts/jane.doe%40example.com?identifierType=email_id  -> 204"
    assert brevo.count(put) == 2
    assert '"emailBlacklisted": false' in brevo and '"emailBlacklisted": true' in brevo
    # then the audit trail (four deliveries) and the counters,
    audit = out[out.index("$ prefsync audit acme") : out.index("$ prefsync stats")]
    assert [line.split("\t")[3] for line in audit.splitlines()[1:] if line] == ["delivered"] * 4
    assert "delivered\t4" in out[out.index("$ prefsync stats") :].splitlines()

    # and nothing it started is still running (each is the leader of its own process group,
    # so the worker's pool children are checked with the group).
    pids = [int(pid) for pid in re.findall(r"^started \S+ pid (\d+)$", out, re.MULTILINE)]
    assert len(pids) == 3, out  # redis-server, the worker, the ingress
    assert all(_gone(pid) for pid in pids), pids
    for pid in pids:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"a process of group {pid} is still running")
