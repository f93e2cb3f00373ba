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
    from worker.connectors.model import ConnectorConfig
    from worker.delivery.reconcile import Drift
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
    mappings (docs/two-way-consent.md#reconcile-prove-a-tool-agrees).

    \b
    One line per drifted person and field: USER FIELD expected=... found=... (the tool's
    own field name; "missed-signal" after it when a listening connector's tool holds a
    refusal prefsync never heard of: never overwritten), then a summary.
    With --fix, each drifted person's correction is enqueued on the bulk lane: the events
    their drifted fields came from, sent again to this connector. A person with a missed
    signal is not corrected.
    Exit codes: 0 no drift (or every drift's correction enqueued), 1 drift remains, 2
    could not run (usage, config, a tool unreadable)."""
    from worker.connectors.base import Transport
    from worker.delivery.pacing import Pacer
    from worker.delivery.reconcile import Reconciler
    from worker.records.metrics import Reconciles, record_reconcile

    if (users_file is None) == (not all_known):
        fail("give exactly one of --users FILE and --all-known")
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
    drifted = {drift.user for drift in result.drifted}
    fixed = _fix(rt, config, tenant, result.drifted) if fix else set()
    stored = _store_missed(rt, config, tenant, result.drifted) if fix else 0
    outcome = "unreadable" if result.unreadable else "drift" if drifted - fixed else "agrees"
    run = Reconciles(config.type_id, time.time(), outcome, result.checked, len(drifted), len(fixed))
    record_reconcile(rt.redis, tenant, connector_id, run)
    if as_json:
        echo_json(
            {
                "checked": result.checked,
                "drifted": [drift.as_dict() for drift in result.drifted],
                "fixed": len(fixed),
                "missed_signals_stored": stored,
                "unreadable": result.unreadable,
            }
        )
    else:
        for drift in result.drifted:
            line = f"{drift.user} {drift.field} expected={json.dumps(drift.expected)} "
            line += f"found={json.dumps(drift.found)}"
            click.echo(line + (f" {drift.kind}" if drift.kind != "drift" else ""))
        click.echo(
            f"checked {result.checked}, drifted {len(drifted)} ({len(result.drifted)} fields), "
            f"fixed {len(fixed)}"
        )
        if stored:
            click.echo(f"stored {stored} missed signal(s) in the signals inbox")
    for user, why in result.unreadable.items():
        click.echo(f"error: {user}: {why}", err=True)
    if result.unreadable:
        sys.exit(2)
    sys.exit(1 if drifted - fixed else 0)


def _fix(rt: Runtime, config: ConnectorConfig, tenant: str, drifts: list[Drift]) -> set[str]:
    """Enqueue on the bulk lane, for each drifted person, the events their drifted fields
    came from, after making the connector forget it was told them; the people whose every
    drift was corrected. A missed signal is never overwritten (sending its field again
    is not asked for, and what the connector was last told of it stays): its person
    stays drifted."""
    from worker.delivery.reconcile import MISSED_SIGNAL, fix_for
    from worker.producer import redeliver
    from worker.queue.lanes import BULK

    by_user: dict[str, list[Drift]] = {}
    for drift in drifts:
        by_user.setdefault(drift.user, []).append(drift)
    fixed: set[str] = set()
    for user, theirs in by_user.items():
        correctable = [drift for drift in theirs if drift.kind != MISSED_SIGNAL]
        if not correctable:
            continue
        correction = fix_for(config, tenant, user, correctable, rt.state.known(tenant, user))
        if correction is None:
            click.echo(
                f"warning: {user}: the drift cannot be corrected from prefsync's state", err=True
            )
            continue
        rt.state.untell(tenant, config.id, user, correction.properties, correction.fields)
        for payload in correction.payloads:
            redeliver(payload, config.id, BULK)
        if len(correctable) == len(theirs):
            fixed.add(user)
    return fixed


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


def _store_missed(rt: Runtime, config: ConnectorConfig, tenant: str, drifts: list[Drift]) -> int:
    """Store each missed signal in the signals inbox, as the tool's own signal would have
    been (docs/two-way-consent.md#the-signals-route-post-signalsconnector_id); how many were new."""
    from datetime import UTC, datetime

    from worker.delivery.reconcile import MISSED_SIGNAL, missed_signal
    from worker.records.signals import SignalInbox

    now = datetime.now(UTC)
    signals = [missed_signal(config, d, now) for d in drifts if d.kind == MISSED_SIGNAL]
    return SignalInbox(rt.redis).store(tenant, signals, now)
