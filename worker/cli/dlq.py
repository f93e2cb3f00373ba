"""`prefsync dlq`: inspect, replay and purge dead-lettered deliveries."""

from __future__ import annotations

import sys
from collections.abc import Iterable

import click

from worker.cli.common import fail, runtime, when
from worker.queue.lanes import BULK, LIVE


@click.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered deliveries."""


@dlq.command("list")
@click.option("--tenant", help="Only this tenant's entries.")
@click.option("--connector", help="Only this connector id's entries.")
def dlq_list(tenant: str | None, connector: str | None) -> None:
    """One line per entry: id, tenant, connector, user, reason, when; then the count."""
    listed = 0
    for e in runtime().deadletters.iter(tenant=tenant, connector_id=connector):
        listed += 1
        click.echo(
            f"{e.id}\t{e.tenant}\t{e.connector_id or '-'}\t{e.user}\t{e.reason}\t"
            f"{when(e.dead_lettered_at)}"
        )
    click.echo(f"{listed} dead letter(s)")


@dlq.command("show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """One entry as JSON: the event, every attempt, the reason."""
    from worker.records.deadletter import dumps

    entry = runtime().deadletters.get(entry_id)
    if entry is None:
        fail(f"no dead letter {entry_id!r}", 1)
    click.echo(dumps(entry))


def _select(ids: tuple[str, ...], all_: bool, tenant: str | None) -> Iterable:
    """The entries named, or every one (of a tenant), streamed a page at a time."""
    store = runtime().deadletters
    if sum([bool(ids), all_, tenant is not None]) != 1:
        fail("name entry ids, or --all, or --tenant T (exactly one of them)")
    if ids:
        entries = [store.get(i) for i in ids]
        missing = [i for i, e in zip(ids, entries, strict=True) if e is None]
        if missing:
            fail(f"no dead letter {', '.join(missing)}", 1)
        return entries
    return store.iter(tenant=tenant)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every entry.")
@click.option("--tenant", help="Replay every entry of this tenant.")
def dlq_replay(ids: tuple[str, ...], all_: bool, tenant: str | None) -> None:
    """Re-enqueue entries through the normal path. An entry is removed once its event is
    enqueued; if it fails again it comes back as a new entry. Entries named by id travel
    as live events; --all and --tenant in the bulk lane, behind live events."""
    from worker.producer import enqueue as enqueue_all
    from worker.producer import redeliver
    from worker.records.deadletter import replay

    lane = LIVE if ids else BULK

    def enqueue(entry) -> str:
        if entry.connector_id:
            return redeliver(entry.payload, entry.connector_id, lane)
        return enqueue_all(entry.payload, lane)

    done, failed = replay(runtime().deadletters, _select(ids, all_, tenant), enqueue)
    for entry, error in failed:
        click.echo(f"{entry.id}: not replayed: {error}", err=True)
    click.echo(f"replayed {len(done)} dead letter(s), {len(failed)} failed")
    if failed:
        sys.exit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every entry.")
def dlq_purge(ids: tuple[str, ...], all_: bool) -> None:
    """Delete entries for good."""
    store = runtime().deadletters
    entries = _select(ids, all_, None)
    removed = sum(store.remove(e.id) for e in entries)
    click.echo(f"purged {removed} dead letter(s)")
