"""`prefsync connectors`: a tenant's connector configs, sealed at rest, and the key they are
sealed with."""

from __future__ import annotations

import base64
import sys
from urllib.parse import SplitResult, urlsplit

import click

from worker.cli.common import echo_json, fail, mapping_lines, read_json, runtime, stored_configs
from worker.core.errors import InvalidConfig
from worker.infra.settings import get_settings


@click.group()
def connectors() -> None:
    """Store, list, show and delete a tenant's connector configs (sealed at rest with
    PREFSYNC_SECRET_KEYS), rotate the key they are sealed with, and link a bidirectional
    connector's tool to the signals route."""


@connectors.command("put")
@click.argument("tenant")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--id", "connector_id", help="Connector id, unique in the tenant (default: type).")
def connectors_put(tenant: str, file: click.utils.LazyFile, connector_id: str | None) -> None:
    """Validate the config in FILE (either generation of shape) and store it."""
    from worker.connectors.config import parse_config

    settings = runtime().settings  # the ones the config is sealed with
    keys = settings.secret_keys.get_secret_value() if settings.secret_keys else ""
    if not keys.strip() and not settings.allow_dev_key:
        # Workers holding the real keys could not open it: every event for it would be
        # dead-lettered.
        fail(
            "PREFSYNC_SECRET_KEYS is not set, so the config would be sealed with this "
            "machine's development key, which the workers cannot open: set "
            "PREFSYNC_SECRET_KEYS, or PREFSYNC_ALLOW_DEV_KEY=1 on a development machine"
        )
    raw = read_json(file)
    try:
        config = parse_config(
            raw, connector_id=connector_id, allow_hosts=get_settings().allow_hosts, storing=True
        )
    except InvalidConfig as exc:
        fail(f"config refused: {exc}", 1)
    if config.bidirectional and not runtime().pmp.has(tenant):
        fail(
            f"config refused: bidirectional: true needs the tenant's PMP credentials, and "
            f"tenant {tenant!r} has none; store them first with "
            f"`prefsync pmp put {tenant} FILE` (docs/two-way-consent.md)",
            1,
        )
    runtime().configs.put(tenant, config)
    click.echo(f"stored connector {config.id!r} ({config.type_id}) for tenant {tenant!r}")


@connectors.command("list")
@click.argument("tenant")
def connectors_list(tenant: str) -> None:
    """One line per connector: id, type, enabled, upsert, on_user_deleted, mappings,
    credential (masked)."""
    connector_ids = runtime().configs.ids(tenant)
    if not connector_ids:
        fail(
            f"tenant {tenant!r} has no connectors (unknown tenant, or a typo?); "
            f"store one with `prefsync connectors put {tenant} FILE`",
            1,
        )
    for connector_id, config, problem in stored_configs(tenant, connector_ids):
        if problem is not None:
            click.echo(f"{connector_id}\tINVALID: {'; '.join(str(problem).splitlines())}")
            continue
        secrets = " ".join(f"{k}={v}" for k, v in config.describe()["authentication"].items())
        click.echo(
            f"{config.id}\t{config.type_id}\t{'enabled' if config.enabled else 'disabled'}\t"
            f"upsert={'on' if config.upsert_mode else 'off'}\t"
            f"on_user_deleted={config.on_user_deleted}\t"
            f"mappings={len(config.mappings)}\t{secrets}"
        )


@connectors.command("check")
@click.argument("tenant")
def connectors_check(tenant: str) -> None:
    """Whether each stored config of TENANT still validates, for each of its mappings
    when it last matched an event ("never": the property it names never had a value in
    an event the worker saw since), and how its changes travel (batches or one call per
    person). Exits 1 if a config is invalid."""
    invalid = never = 0
    connector_ids = runtime().configs.ids(tenant)
    if not connector_ids:
        click.echo(f"tenant {tenant!r} has no connectors")
    for connector_id, config, problem in stored_configs(tenant, connector_ids):
        if problem is not None:
            invalid += 1
            click.echo(f"{connector_id}: INVALID, every event for it is dead-lettered")
            for line in str(problem).splitlines():
                click.echo(f"  {line}")
            continue
        click.echo(f"{config.id} ({config.type_id}): valid")
        for line, matched in mapping_lines(tenant, config):
            never += matched is None
            click.echo(f"  {line}")
        click.echo(f"  delivery: {config.connector.delivery_mode}")
    click.echo(f"{invalid} invalid config(s), {never} mapping(s) never matched an event")
    if invalid:
        sys.exit(1)


@connectors.command("show")
@click.argument("tenant")
@click.argument("connector_id")
def connectors_show(tenant: str, connector_id: str) -> None:
    """The stored config as JSON, credentials masked."""
    config = runtime().configs.get(tenant, connector_id)
    if config is None:
        fail(f"tenant {tenant!r} has no connector {connector_id!r}", 1)
    echo_json(config.describe())


@connectors.command("delete")
@click.argument("tenant")
@click.argument("connector_id")
def connectors_delete(tenant: str, connector_id: str) -> None:
    """Delete a connector config."""
    if not runtime().configs.delete(tenant, connector_id):
        fail(f"tenant {tenant!r} has no connector {connector_id!r}", 1)
    runtime().recorder.forget_matches(tenant, connector_id)
    click.echo(f"deleted connector {connector_id!r} of tenant {tenant!r}")


@connectors.command("reencrypt")
def connectors_reencrypt() -> None:
    """Seal every stored config again under the first key of PREFSYNC_SECRET_KEYS: after a
    new key was put first (rotation), or for configs stored before sealing existed; the
    tenants' PMP credentials too. Safe to run again; a config put meanwhile is left as it
    is (already current)."""
    try:
        changed, current = runtime().configs.reencrypt()
        pmp_changed, pmp_current = runtime().pmp.reencrypt()
    except InvalidConfig as exc:
        fail(str(exc), 1)
    click.echo(f"re-encrypted {changed} config(s), {current} already under the first key")
    click.echo(
        f"re-encrypted {pmp_changed} tenant(s)' PMP credentials, "
        f"{pmp_current} already under the first key"
    )


@connectors.command("new-key")
def connectors_new_key() -> None:
    """Print a new key for PREFSYNC_SECRET_KEYS (put it first to rotate, then run
    `prefsync connectors reencrypt`, then drop the old key)."""
    from worker.infra.sealing import new_key

    click.echo(new_key())


@connectors.command("link")
@click.argument("tenant")
@click.argument("connector_id")
@click.option("--url", "public_url", required=True, help="The ingress's public base URL.")
def connectors_link(tenant: str, connector_id: str, public_url: str) -> None:
    """Wire a bidirectional connector's tool to the signals route: an ingress credential
    of its own, then for Brevo a marketing webhook (found rather than created twice), for
    Braze the campaign steps and the exact template to paste."""
    from worker.connectors.base import Transport
    from worker.connectors.braze import BrazeConnector, signal_instructions
    from worker.connectors.sendinblue import SendinblueConnector
    from worker.core.errors import DeliveryError
    from worker.ingress.credentials import CredentialStore

    base = _public_url(public_url)
    config = runtime().configs.get(tenant, connector_id)
    if config is None:
        fail(f"tenant {tenant!r} has no connector {connector_id!r}", 1)
    if not config.bidirectional:
        fail(
            f"connector {connector_id!r} is not bidirectional: store it with "
            '"bidirectional": true first',
            1,
        )
    rt = runtime()
    route = f"{base.scheme}://{base.netloc}{base.path}/signals/{connector_id}"
    credentials = CredentialStore(rt.redis, rt.settings.ingress_token_ttl)
    connector = config.connector
    if isinstance(connector, SendinblueConnector):
        transport = Transport(rt.settings.http_timeout)
        try:
            hooks = connector.marketing_webhooks(transport, config)
        except DeliveryError as exc:
            fail(f"Brevo refused to list its webhooks: {exc}", 1)
        for hook in hooks:
            if _without_user_info(str(hook.get("url", ""))) == route:
                click.echo(f"Brevo already sends to {route} (webhook {hook.get('id')})")
                return
        client, secret = credentials.add(tenant)
        with_auth = f"{base.scheme}://{client.client_id}:{secret}@{base.netloc}{base.path}"
        try:
            hook_id = connector.create_marketing_webhook(
                transport,
                config,
                f"{with_auth}/signals/{connector_id}",
                f"prefsync two-way consent: connector {connector_id}",
            )
        except DeliveryError as exc:
            credentials.revoke(tenant, client.client_id)  # no webhook holds it
            fail(f"Brevo refused the webhook: {exc}", 1)
        click.echo(
            f"Brevo webhook {hook_id} sends unsubscribed and spam to {route}, "
            f"as ingress client {client.client_id} (prefsync ingress list {tenant})"
        )
    elif isinstance(connector, BrazeConnector):
        client, secret = credentials.add(tenant)
        basic = base64.b64encode(f"{client.client_id}:{secret}".encode()).decode()
        groups = [
            m.id for m in config.mappings if (feed := connector.feed(m.id)) and feed.field == m.id
        ]
        click.echo(signal_instructions(route, f"Basic {basic}", groups))
        click.echo(
            f"\nIngress client {client.client_id} was created for it; the header holds its "
            "secret, shown this once."
        )


def _public_url(text: str) -> SplitResult:
    parts = urlsplit(text.strip())
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        fail("--url: must be the ingress's public https:// URL, without user info", 2)
    if parts.query or parts.fragment:
        fail("--url: must have no query or fragment", 2)
    return parts._replace(path=parts.path.rstrip("/"))


def _without_user_info(url: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")
