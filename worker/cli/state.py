"""`prefsync state`: what prefsync believes about one person."""

from __future__ import annotations

import json

import click

from worker.cli.common import fail, runtime, stored_configs, when
from worker.core.errors import PermanentError


@click.group()
def state() -> None:
    """What prefsync believes about one person: the newest known value of each property
    (newest wins) and the fields it feeds, per connector."""


@state.command("show")
@click.argument("tenant")
@click.argument("user")
def state_show(tenant: str, user: str) -> None:
    """The newest known value of each of USER's properties (when, version, from which
    event) and, per connector of TENANT, the fields they feed (Braze email_subscribe...)
    as computed now and as last delivered."""
    from worker.delivery.deliverer import fed_state

    rt = runtime()
    known = rt.state.known(tenant, user)
    if not known:
        click.echo(f"nothing known about {user!r} in tenant {tenant!r}")
    else:
        click.echo("property\tvalue\tdated\tversion\tfrom event")
    for name, item in sorted(known.items()):
        version = "-" if item.version is None else str(item.version)
        click.echo(
            f"{name}\t{json.dumps(item.value)}\t{when(item.timestamp_us / 1e6)}\t"
            f"{version}\t{item.event_key}"
        )
    current = {name: item.value for name, item in known.items()}
    # A config that no longer validates feeds nothing: `prefsync connectors check` says why.
    valid = [config for _, config, problem in stored_configs(tenant) if problem is None]
    for config in valid:
        delivered = rt.state.delivered(tenant, config.id, user)
        try:
            fed = fed_state(config, current)
        except PermanentError as exc:
            fed = {"(refused)": str(exc)}
        for name in sorted(fed.keys() | delivered.keys()):
            now = json.dumps(fed.get(name))
            told = json.dumps(delivered.get(name))
            click.echo(f"connector {config.id}\t{name}\tnow {now}\tlast delivered {told}")


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
