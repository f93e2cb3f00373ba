"""`prefsync stats`: the outcome counters and the backlog now."""

from __future__ import annotations

import click

from worker.cli.common import fail, mapping_lines, runtime, stored_configs, when
from worker.queue.lanes import queues


@click.command()
@click.option("--tenant", help="Only this tenant.")
@click.option("--connector", help="Only this connector (needs --tenant).")
@click.option(
    "--mappings",
    "show_mappings",
    is_flag=True,
    help="Then, per connector, when each mapping last matched an event (needs --tenant).",
)
def stats(tenant: str | None, connector: str | None, show_mappings: bool) -> None:
    """Outcome counters (delivered, skipped by reason, dead-lettered: since the start),
    then the backlog now, for all tenants: messages queued, retries waiting, outbox
    entries, dead letters (and per tenant, their count and bytes), and how long the oldest
    unfinished task has been due; each connector's last reconcile. With --mappings, when
    each mapping last matched."""
    from worker.core.retries import clock
    from worker.records.metrics import read_backlog, read_reconciles

    if connector and not tenant:
        fail("--connector needs --tenant")
    if show_mappings and not tenant:
        fail("--mappings needs --tenant")
    rt = runtime()
    counts = rt.recorder.counts(tenant, connector)
    click.echo("outcome\tcount")
    if not counts:
        click.echo("no outcomes recorded yet")
    for name, value in counts.items():
        click.echo(f"{name}\t{value}")
    backlog = read_backlog(rt.redis, queues(), rt.settings.visibility_timeout, clock())
    click.echo("\nbacklog (all tenants)\tnow")
    click.echo(f"queue depth\t{backlog.queue_depth}")
    for name, parked in rt.feeder.parked().items():
        if tenant is None or name == tenant:
            click.echo(f"bulk messages parked for {name}\t{parked}")
    click.echo(f"retries waiting\t{backlog.retries_waiting}")
    click.echo(f"outbox entries\t{backlog.outbox}")
    click.echo(f"dead letters\t{backlog.dead_letters} ({backlog.dead_letter_bytes:,} bytes)")
    click.echo(f"oldest waiting (s)\t{backlog.oldest_waiting:.1f}")
    for name, (count, size) in rt.deadletters.kept().items():
        if tenant is None or name == tenant:
            click.echo(f"dead letters of {name}\t{count} ({size:,} bytes)")
    for (name, connector_id), run in sorted(read_reconciles(rt.redis).items()):
        if (tenant is None or name == tenant) and connector in (None, connector_id):
            click.echo(
                f"last reconcile of {name}/{connector_id}\t{when(run.at)} {run.result}: "
                f"checked {run.checked}, drifted {run.drifted}, fixed {run.fixed} "
                f"(all runs: checked {run.checked_total}, drifted {run.drifted_total}, "
                f"fixed {run.fixed_total})"
            )
    if show_mappings:
        # A mapping that never matches an event is visible here (and in `connectors check`).
        chosen = [connector] if connector else None
        for connector_id, config, problem in stored_configs(tenant, chosen):
            if problem is not None:
                click.echo(
                    f"mappings of {connector_id}: config INVALID (prefsync connectors check)"
                )
                continue
            click.echo(f"mappings of {connector_id}:")
            for line, _ in mapping_lines(tenant, config):
                click.echo(f"  {line}")
