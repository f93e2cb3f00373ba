"""`prefsync ingress`: the credentials a PMP (or another producer) uses to call the ingress."""

from __future__ import annotations

import json

import click

from worker.cli.common import fail, runtime, when


@click.group()
def ingress() -> None:
    """Credentials a PMP (or another producer) uses to call the ingress: add, list, revoke."""


def _credentials():
    from worker.ingress.credentials import CredentialStore

    rt = runtime()
    return CredentialStore(rt.redis, rt.settings.ingress_token_ttl)


@ingress.command("add")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True, help="Print the credential as JSON.")
def ingress_add(tenant: str, as_json: bool) -> None:
    """Create a credential for TENANT. Its secret is shown this once: only a hash is kept.
    Give the PMP the client id and secret, and the token URL http(s)://HOST/oauth/token."""
    client, secret = _credentials().add(tenant)
    if as_json:
        document = {"tenant": tenant, "client_id": client.client_id, "client_secret": secret}
        click.echo(json.dumps(document))
        return
    click.echo(f"tenant         {tenant}")
    click.echo(f"client id      {client.client_id}")
    click.echo(f"client secret  {secret}")
    click.echo("The secret is shown once and cannot be shown again; keep it now.")


@ingress.command("list")
@click.argument("tenant")
def ingress_list(tenant: str) -> None:
    """TENANT's credentials: client id, secret (masked: only its hash is kept), created."""
    clients = _credentials().list(tenant)
    click.echo("client_id\tclient_secret\tcreated")
    for client in clients:
        click.echo(f"{client.client_id}\t********\t{when(client.created_at)}")
    if not clients:
        click.echo(f"tenant {tenant!r} has no ingress credentials", err=True)


@ingress.command("revoke")
@click.argument("tenant")
@click.argument("client_id")
def ingress_revoke(tenant: str, client_id: str) -> None:
    """Delete a credential: its secret and the tokens issued for it stop working (within
    PREFSYNC_INGRESS_AUTH_CACHE seconds on every ingress process)."""
    if not _credentials().revoke(tenant, client_id):
        fail(f"tenant {tenant!r} has no ingress credential {client_id!r}", 1)
    click.echo(f"revoked {client_id} of tenant {tenant!r}")
