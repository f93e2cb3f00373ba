"""`prefsync state`: what prefsync believes about one person."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from worker.cli.common import fail, runtime, stored_configs, when
from worker.connectors.base import feeds
from worker.core.errors import PermanentError
from worker.core.events import canonical_name

if TYPE_CHECKING:
    from worker.connectors.model import ConnectorConfig
    from worker.records.person import Known


@click.group()
def state() -> None:
    """What prefsync believes about one person: the newest known value of each property
    (newest wins) and the fields it feeds, per connector."""


@state.command("show")
@click.argument("tenant")
@click.argument("user")
def state_show(tenant: str, user: str) -> None:
    """What prefsync believes about USER (the person's organization_user_id, the id
    Braze and Brevo know them by) in TENANT, and what each connector was last told.

    \b
    First one line per property: its newest known value (newest wins), when it was dated,
    the user payload's version, the event it came from. Then, per connector, one line per
    field several mappings feed (Braze email_subscribe, a subscription group; Brevo
    emailBlacklisted): "now", computed from those values, and "last delivered", what
    the connector was last told; when they differ, why. Exits 1 if nothing is known."""
    from worker.delivery.deliverer import fed_state

    rt = runtime()
    known = rt.state.known(tenant, user)
    current = {name: item.value for name, item in known.items()}
    # A config that no longer validates feeds nothing: `prefsync connectors check` says why.
    valid = [config for _, config, problem in stored_configs(tenant) if problem is None]
    lines = []
    for config in valid:
        delivered = rt.state.delivered(tenant, config.id, user)
        try:
            fed = fed_state(config, current)
        except PermanentError as exc:
            fed = {"(refused)": str(exc)}
        ended = rt.state.ended_sources(tenant, config.id, user)
        for name in sorted(fed.keys() | delivered.keys()):
            now, told = fed.get(name), delivered.get(name)
            line = f"connector {config.id}\t{name}\tnow {json.dumps(now)}\t"
            line += f"last delivered {json.dumps(told)}"
            if now != told:
                line += f"\t{_why(config, name, known, ended)}"
            lines.append(line)
    if not known and not lines:
        fail(
            f"nothing known about {user!r} in tenant {tenant!r}: no event of theirs was "
            "delivered (USER is the organization_user_id; see `prefsync audit`)",
            1,
        )
    if known:
        click.echo("property\tvalue\tdated\tversion\tfrom event")
    for name, item in sorted(known.items()):
        version = "-" if item.version is None else str(item.version)
        click.echo(
            f"{name}\t{json.dumps(item.value)}\t{when(item.timestamp_us / 1e6)}\t"
            f"{version}\t{item.event_key}"
        )
    for line in lines:
        click.echo(line)


def _why(config: ConnectorConfig, field: str, known: dict[str, Known], ended: set[str]) -> str:
    """Why a fed field's value now differs from what the connector was last told."""
    feeding = [
        canonical_name(mapping.value)
        for mapping, feed in feeds(config)
        if feed is not None and feed.field == field
    ]
    pending = sorted(
        {known[name].event_key for name in feeding if name in known}
        - {known[name].event_key for name in feeding if name in known and name in ended}
    )
    if pending:
        return (
            f"why: the delivery of {', '.join(pending)} has not ended here (queued, retrying, "
            f"or dead-lettered: prefsync dlq list)"
        )
    if any(known[name].event_key.startswith("user.updated:") for name in feeding if name in known):
        return (
            "why: a field is sent when an event changes a property feeding it; the "
            "user.updated that holds the newest value left it as it was, and prefsync does "
            "not re-send an unchanged value (it could undo a change made in the destination "
            "since, an unsubscribe from an email footer say): the destination keeps what it "
            "was last told until the next change (docs/mappings.md#what-each-event-type-propagates)"
        )
    return "why: the connector's mappings changed since it was last told"


@state.command("forget")
@click.argument("tenant")
@click.argument("user")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
def state_forget(tenant: str, user: str, yes: bool) -> None:
    """Reset what prefsync believes about USER (for a state a mis-dated event poisoned):
    the newest-wins state and the fields last delivered to each connector. The next
    event of the person is then taken as the newest. Events that already ended stay
    ended: what each connector was told, and the erasure tombstone, are kept."""
    if not yes and not click.confirm(f"forget the state of {user!r} in tenant {tenant!r}?"):
        fail("nothing forgotten", 1)
    rt = runtime()
    removed = rt.state.forget(tenant, user, rt.configs.ids(tenant))
    click.echo(f"forgot {removed} record(s) of {user!r} in tenant {tenant!r}")
