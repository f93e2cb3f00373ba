"""`prefsync audit`: what each destination was told about a tenant's people, and when."""

from __future__ import annotations

import json

import click

from worker.cli.common import fail, runtime, when


@click.command()
@click.argument("tenant")
@click.option("--user", help="Only this person (their organization_user_id; it is hashed).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(tenant: str, user: str | None, limit: int, as_json: bool) -> None:
    """What each destination was told about a tenant's people, and when (newest first):
    time, connector, person, outcome, reason or HTTP status, fields written.

    A person is shown as the keyed hash of their id (PREFSYNC_USER_HASH_KEY), never the
    id: the trail outlives their erasure (docs/erasure.md). --user takes the id and
    hashes it."""
    rt = runtime()
    person = None if user is None else rt.pseudonyms.user(user)
    entries = rt.audit.query(tenant, user=person, limit=limit)
    if not entries:
        if not rt.configs.ids(tenant) and not rt.audit.length(tenant):
            fail(f"unknown tenant {tenant!r}: no connectors and no audit entries", 1)
        whom = f"user {user!r} of tenant {tenant!r}" if user else f"tenant {tenant!r}"
        click.echo(f"no audit entries for {whom} yet", err=True)
    for entry in entries:
        if as_json:
            click.echo(entry.model_dump_json())
            continue
        why = entry.reason or (f"HTTP {entry.status}" if entry.status else "")
        written = json.dumps(entry.fields, ensure_ascii=False) if entry.fields else ""
        click.echo(
            f"{when(entry.at)}\t{entry.connector_id}\t{entry.user}\t{entry.outcome}\t"
            f"{why}\t{written}"
        )
