"""`prefsync pmp`: a tenant's PMP API credentials, for two-way consent (docs/two-way-consent.md),
sealed at rest like connector configs."""

from __future__ import annotations

import click

from worker.cli.common import echo_json, fail, read_json, runtime
from worker.core.errors import InvalidConfig
from worker.infra.settings import get_settings


@click.group()
def pmp() -> None:
    """Store, show and delete a tenant's PMP API credentials (sealed at rest with
    PREFSYNC_SECRET_KEYS): what prefsync writes a refusal made in a tool back with."""


@pmp.command("put")
@click.argument("tenant")
@click.argument("file", type=click.File("r", encoding="utf-8"))
def pmp_put(tenant: str, file: click.utils.LazyFile) -> None:
    """Validate the PMP credentials in FILE (or - for stdin) and store them for TENANT."""
    from worker.connectors.pmp import parse_credentials

    try:
        credentials = parse_credentials(
            read_json(file), tenant=tenant, allow_hosts=get_settings().allow_hosts
        )
    except InvalidConfig as exc:
        fail(f"PMP credentials refused: {exc}", 1)
    runtime().pmp.put(tenant, credentials)
    click.echo(
        f"stored PMP credentials ({credentials.type_id}, {credentials.api_url}) "
        f"for tenant {tenant!r}"
    )


@pmp.command("show")
@click.argument("tenant")
def pmp_show(tenant: str) -> None:
    """The stored credentials as JSON, the key and secret masked."""
    try:
        credentials = runtime().pmp.get(tenant)
    except InvalidConfig as exc:
        fail(str(exc), 1)
    if credentials is None:
        fail(f"tenant {tenant!r} has no PMP credentials", 1)
    echo_json(credentials.describe())


@pmp.command("delete")
@click.argument("tenant")
def pmp_delete(tenant: str) -> None:
    """Delete the tenant's PMP credentials. Refused while a connector of the tenant is
    bidirectional: its refusals could not reach the PMP."""
    from worker.records.signals import bidirectional

    if listening := bidirectional(runtime().redis, tenant):
        fail(
            f"tenant {tenant!r} has bidirectional connectors ({', '.join(listening)}): "
            "store them with bidirectional off, or delete them, first",
            1,
        )
    if not runtime().pmp.delete(tenant):
        fail(f"tenant {tenant!r} has no PMP credentials", 1)
    click.echo(f"deleted the PMP credentials of tenant {tenant!r}")
