"""Backfill (worker.backfill, `prefsync backfill`): every user a full-state change on the
bulk lane for the named connectors, the position kept after each page and resumed from,
refused users counted without naming them, export files plain or gzip."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.unit.queue.harness import BRAZE, KEY
from worker import backfill
from worker.backfill import Page, Positions, file_pages, full_state
from worker.cli import main
from worker.connectors.config import parse_config
from worker.core.errors import InvalidEvent, RetryableError
from worker.core.events import parse_event
from worker.delivery.runtime import Runtime
from worker.records.feeder import parked_key

TENANT = "acme"


def user(number: int, updated_at: str = "2026-12-01T10:00:00Z") -> dict[str, Any]:
    return {
        "id": f"pmp-{number}",
        "organization_user_id": f"user-{number}@example.com",
        "updated_at": updated_at,
        "version": 3,
        "consents": {"purposes": [{"id": "newsletter", "enabled": number % 2 == 0}]},
    }


def pages_of(users: list[Any], size: int, fail_at: int | None = None):
    """A source of ``users`` in pages of ``size``, the cursor the next page's start;
    raising at page ``fail_at`` (0-based, counted from the first page read)."""

    def pages(cursor: str | None) -> Iterator[Page]:
        start = int(cursor or 0)
        for number, at in enumerate(range(start, len(users), size)):
            if number == fail_at:
                raise RuntimeError("the PMP went away")
            more = at + size < len(users)
            yield Page(users[at : at + size], str(at + size) if more else None)

    return pages


def parked(rt: Runtime) -> list[dict[str, Any]]:
    return [json.loads(m) for m in rt.redis.lrange(parked_key(TENANT), 0, -1)]


def parked_users(rt: Runtime) -> list[str]:
    return [
        payload["parameters"]["new_entity"]["organization_user_id"]
        for message in parked(rt)
        for payload in message["args"][0]
    ]


def test_a_full_state_sends_every_value_even_one_a_webhook_would_not_resend() -> None:
    event = parse_event(full_state(TENANT, user(2)))
    assert event.tenant == TENANT and event.user == "user-2@example.com"
    assert event.resolve("consents_purposes_newsletter_enabled") == (
        "consents_purposes_newsletter_enabled",
        True,
    )
    # The live webhook's key for the same state: a state told already is a duplicate.
    assert event.event_key == "user.updated:pmp-2:2026-12-01T10:00:00Z"
    assert event.ordering.version == 3


def test_a_user_without_an_id_is_named_by_their_organization_user_id() -> None:
    bare = user(1)
    del bare["id"]
    assert parse_event(full_state(TENANT, bare)).entity_id == "user-1@example.com"


def test_a_user_of_another_organization_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="organization_id: not this tenant's"):
        full_state(TENANT, {**user(1), "organization_id": "globex"})
    assert parse_event(full_state(TENANT, {**user(1), "organization_id": TENANT})).tenant == TENANT


def test_a_file_that_is_not_text_is_refused_in_one_line(rt: Runtime, tmp_path: Path) -> None:
    braze(rt)
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress(b"{}\n")[:-6])  # cut short
    done = CliRunner().invoke(main, ["backfill", TENANT, "--file", str(path)])
    assert done.exit_code == 1
    assert done.stderr.startswith(f"error: {path}: not a readable export file (")
    assert "Traceback" not in done.output


def test_every_user_is_parked_on_the_bulk_lane_for_the_named_connectors(rt: Runtime) -> None:
    users = [user(n) for n in range(250)]
    positions = Positions(rt.redis, TENANT)
    seen: list[int] = []

    progress = backfill.backfill(
        TENANT,
        pages_of(users, 100),
        positions,
        "pmp",
        connectors=["braze-eu"],
        on_page=lambda p: seen.append(p.enqueued),
    )

    assert (progress.read, progress.enqueued, progress.refused) == (250, 250, 0)
    assert seen == [100, 200, 250]
    assert parked_users(rt) == [u["organization_user_id"] for u in users]
    assert {m["kwargs"]["lane"] for m in parked(rt)} == {"bulk"}
    assert all(m["kwargs"]["connectors"] == ["braze-eu"] for m in parked(rt))
    assert positions.get("pmp") is None  # ended: the next run starts over


def test_all_connectors_when_none_is_named(rt: Runtime) -> None:
    backfill.backfill(TENANT, pages_of([user(1)], 100), Positions(rt.redis, TENANT), "pmp")
    [message] = parked(rt)
    assert "connectors" not in message["kwargs"]


def test_an_interrupted_run_resumes_after_the_last_page_enqueued(rt: Runtime) -> None:
    users = [user(n) for n in range(250)]
    positions = Positions(rt.redis, TENANT)
    with pytest.raises(RuntimeError):
        backfill.backfill(TENANT, pages_of(users, 100, fail_at=1), positions, "pmp")
    assert positions.get("pmp") == "100"
    assert rt.redis.hget("prefsync:backfill:acme", "pmp") == b"100"

    progress = backfill.backfill(TENANT, pages_of(users, 100), positions, "pmp", resume=True)

    assert progress.resumed_from == "100" and progress.read == 150
    assert parked_users(rt) == [u["organization_user_id"] for u in users]  # each once


def test_without_resume_a_run_starts_over(rt: Runtime) -> None:
    positions = Positions(rt.redis, TENANT)
    positions.set("pmp", "100")
    progress = backfill.backfill(TENANT, pages_of([user(1)], 100), positions, "pmp")
    assert progress.read == 1 and progress.resumed_from is None


def test_refused_users_are_counted_by_position_never_named(rt: Runtime) -> None:
    undated = user(1)
    del undated["updated_at"]
    future = user(2, updated_at="2999-01-01T00:00:00Z")
    users = [user(0), undated, future, "not an object", user(3)]

    progress = backfill.backfill(TENANT, pages_of(users, 100), Positions(rt.redis, TENANT), "pmp")

    assert (progress.read, progress.enqueued, progress.refused) == (5, 2, 3)
    refusals = sorted(progress.refusals)
    assert [r.split(":")[0] for r in refusals] == ["user 2", "user 3", "user 4"]
    assert "updated_at or created_at" in refusals[0]
    assert "ahead of the clock" in refusals[1]
    assert "must be a JSON object" in refusals[2]
    assert not any("example.com" in r for r in progress.refusals)
    assert parked_users(rt) == ["user-0@example.com", "user-3@example.com"]


@pytest.mark.parametrize("compressed", [False, True])
def test_an_export_file_is_read_in_pages_plain_or_gzip(tmp_path: Path, compressed: bool) -> None:
    text = "".join(json.dumps(user(n)) + "\n" for n in range(250)) + "\n{oops\n"
    path = tmp_path / "export.jsonl"
    if compressed:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)

    pages = list(file_pages(path, None))

    assert [len(p.users) for p in pages] == [100, 100, 51]
    assert [p.next_position for p in pages] == ["100", "200", None]
    assert pages[0].users[0] == user(0)
    assert (
        str(pages[2].users[-1])
        == "line 252: not JSON (Expecting property name enclosed in double quotes)"
    )
    assert [len(p.users) for p in file_pages(path, "200")] == [51]
    assert backfill.count_lines(path) == 251


# -- the command -------------------------------------------------------------------------


def braze(rt: Runtime) -> None:
    config = {
        "id": "braze-eu",
        "type_id": "braze",
        "authentication": {"api_key": KEY, "server": BRAZE},
        "mappings": [{"id": "OPTED_IN", "value": "consents_purposes_newsletter_enabled"}],
    }
    rt.configs.put(TENANT, parse_config(config))


def test_the_command_refuses_a_connector_the_tenant_has_not(rt: Runtime) -> None:
    braze(rt)
    runner = CliRunner()
    unknown = runner.invoke(main, ["backfill", TENANT, "--connector", "brevo"])
    assert unknown.exit_code == 1
    assert "tenant 'acme' has no connector 'brevo'" in unknown.stderr
    no_pmp = runner.invoke(main, ["backfill", TENANT])
    assert no_pmp.exit_code == 2
    assert "has no PMP credentials" in no_pmp.stderr


def test_the_command_backfills_a_file_with_a_json_summary(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(user(n)) + "\n" for n in range(3)).encode()))
    braze(rt)
    done = CliRunner().invoke(main, ["backfill", TENANT, "--file", str(path), "--json"])
    assert done.exit_code == 0, done.output
    summary = json.loads(done.stdout)
    assert (summary["read"], summary["enqueued"], summary["refused"]) == (3, 3, 0)
    assert len(parked_users(rt)) == 3


def test_a_run_that_stops_says_how_far_it_went_and_how_to_continue(
    rt: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    braze(rt)
    path = tmp_path / "export.jsonl"
    path.write_text("".join(json.dumps(user(n)) + "\n" for n in range(150)))

    def stalls(path: Path, start: str | None) -> Iterator[Page]:
        yield next(file_pages(path, start))
        raise RetryableError("the PMP is unavailable for reading users (HTTP 503): no body")

    monkeypatch.setattr(backfill, "file_pages", stalls)
    stopped = CliRunner().invoke(main, ["backfill", TENANT, "--file", str(path)])

    assert stopped.exit_code == 2
    assert stopped.stdout == "read 100 user(s), enqueued 100, refused 0\n"
    assert stopped.stderr.endswith(
        "HTTP 503): no body; run it again with --resume to continue after the last page enqueued\n"
    )
    assert Positions(rt.redis, TENANT).get(f"file:{path.resolve()}") == "100"
