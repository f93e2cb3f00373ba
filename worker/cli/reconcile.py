"""`prefsync reconcile`: prove a tool holds what prefsync's state says it should."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING

import click

from worker.cli.common import echo_json, fail, runtime
from worker.core.errors import DeliveryError, InvalidConfig

if TYPE_CHECKING:
    from worker.delivery.runtime import Runtime


@click.command()
@click.argument("tenant")
@click.argument("connector_id")
@click.option(
    "--users",
    "users_file",
    type=click.File("r", encoding="utf-8"),
    help="A file of person ids (organization_user_id), one a line; - for stdin.",
)
@click.option("--all-known", is_flag=True, help="Every person prefsync has a record of in TENANT.")
@click.option("--fix", is_flag=True, help="Enqueue a correction of each drifted person.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of lines.")
def reconcile(
    tenant: str,
    connector_id: str,
    users_file: click.utils.LazyFile | None,
    all_known: bool,
    fix: bool,
    as_json: bool,
) -> None:
    """Read what CONNECTOR_ID's tool holds for some people of TENANT and compare it, field
    by field, with what prefsync's state says it should hold under the connector's
    mappings (docs/two-way.md#reconcile-prove-a-tool-agrees).

    \b
    One line per drifted person and field: USER FIELD expected=... found=... (the tool's
    own field name; "missed-signal" after it when a listening connector's tool holds a
    refusal prefsync never heard of: never overwritten), then a summary.
    Exit codes: 0 no drift, 1 drift, 2 could not run (usage, config, a tool unreadable)."""
    from worker.connectors.base import Transport
    from worker.delivery.pacing import Pacer
    from worker.delivery.reconcile import Reconciler
    from worker.records.metrics import Reconciles, record_reconcile

    if (users_file is None) == (not all_known):
        fail("give exactly one of --users FILE and --all-known")
    if fix:
        fail("--fix is not available yet: reconcile reports the drift, nothing is enqueued")
    rt = runtime()
    try:
        config = rt.configs.get(tenant, connector_id)
    except InvalidConfig as exc:
        fail(f"connector {connector_id!r} of tenant {tenant!r} does not validate: {exc}")
    if config is None:
        fail(
            f"tenant {tenant!r} has no connector {connector_id!r} (see `prefsync connectors list`)"
        )
    users = _known(rt, tenant) if users_file is None else _listed(users_file)
    settings = rt.settings
    reconciler = Reconciler(
        Transport(settings.http_timeout),
        Pacer(rt.redis, max_hold=settings.rate_limit_max_wait),
        countdowns=settings.retry_countdowns,
        jitter=settings.retry_jitter,
    )

    def current(user: str) -> dict[str, object]:
        return {name: item.value for name, item in rt.state.known(tenant, user).items()}

    result = reconciler.run(config, users, current)
    people = len({drift.user for drift in result.drifted})
    outcome = "unreadable" if result.unreadable else "drift" if result.drifted else "agrees"
    run = Reconciles(config.type_id, time.time(), outcome, result.checked, people, 0)
    record_reconcile(rt.redis, tenant, connector_id, run)
    if as_json:
        echo_json(
            {
                "checked": result.checked,
                "drifted": [drift.as_dict() for drift in result.drifted],
                "fixed": 0,
                "unreadable": result.unreadable,
            }
        )
    else:
        for drift in result.drifted:
            line = f"{drift.user} {drift.field} expected={json.dumps(drift.expected)} "
            line += f"found={json.dumps(drift.found)}"
            click.echo(line + (f" {drift.kind}" if drift.kind != "drift" else ""))
        click.echo(
            f"checked {result.checked}, drifted {people} ({len(result.drifted)} fields), fixed 0"
        )
    for user, why in result.unreadable.items():
        click.echo(f"error: {user}: {why}", err=True)
    if result.unreadable:
        sys.exit(2)
    sys.exit(1 if result.drifted else 0)


def _listed(users_file: click.utils.LazyFile) -> list[str]:
    return [line.strip() for line in users_file if line.strip()]


def _known(rt: Runtime, tenant: str) -> list[str]:
    """Every person prefsync has a record of in ``tenant``. Records are named by a keyed
    hash of the id, which cannot be read back: the ids come from the PMP, each kept when
    prefsync knows something of that person."""
    credentials = rt.pmp.get(tenant)
    if credentials is None:
        fail(
            f"--all-known reads the people from the PMP, and tenant {tenant!r} has no PMP "
            f"credentials: store them with `prefsync pmp put {tenant} FILE`, or give --users"
        )
    try:
        ids = [user.get("organization_user_id") for user in rt.pmp_client.users(credentials)]
    except DeliveryError as exc:
        fail(f"the PMP's users could not be read: {exc}")
    return [user for user in ids if isinstance(user, str) and rt.state.known(tenant, user)]
