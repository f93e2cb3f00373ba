"""`prefsync preview`: what the worker would send for an event, sending nothing."""

from __future__ import annotations

import json

import click

from worker.cli.common import echo_json, fail, read_json, stored_configs
from worker.core.errors import InvalidEvent


@click.command()
@click.argument("tenant")
@click.argument("event_file", type=click.File("r", encoding="utf-8"))
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON.")
def preview(tenant: str, event_file: click.utils.LazyFile, as_json: bool) -> None:
    """Dry run: for each of TENANT's connectors, the properties the event in EVENT_FILE
    gives its mappings and the exact HTTP requests the worker would send (keys masked), or
    why it would skip. Nothing is sent. A request listed second is a fallback (Brevo's
    create after a 404 when upsert is on)."""
    from worker.delivery.preview import broken
    from worker.delivery.preview import preview as make_preview
    from worker.producer import validate

    raw = read_json(event_file)
    try:
        event = validate(raw)
    except InvalidEvent as exc:
        fail(f"{event_file.name}: {exc}", 1)
    if event.tenant != tenant:
        fail(f"the event belongs to tenant {event.tenant!r}, not {tenant!r}", 1)
    previews = [
        broken(connector_id, problem) if problem is not None else make_preview(event, config)
        for connector_id, config, problem in stored_configs(tenant)
    ]
    if as_json:
        echo_json([p.as_dict() for p in previews])
        return
    if not previews:
        click.echo(f"tenant {tenant!r} has no connectors: nothing would be sent")
    for p in previews:
        click.echo(f"connector {p.connector_id} ({p.type_id})")
        click.echo(f"  properties: {json.dumps(p.properties, ensure_ascii=False)}")
        if p.skipped:
            click.echo(f"  skipped: {p.skipped}")
        for number, request in enumerate(p.requests, start=1):
            click.echo(f"  request {number}: {request['method']} {request['url']}")
            click.echo(f"    headers: {json.dumps(request['headers'], ensure_ascii=False)}")
            click.echo(f"    body: {json.dumps(request['body'], ensure_ascii=False)}")
