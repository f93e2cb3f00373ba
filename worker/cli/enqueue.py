"""`prefsync enqueue`: validate and enqueue the events of a file."""

from __future__ import annotations

import sys
from typing import Any

import click

from worker.cli.common import fail
from worker.core.errors import InvalidEvent
from worker.core.payloads import read_payloads


@click.command()
@click.argument("file", type=click.File("rb"))
@click.option(
    "--bulk",
    is_flag=True,
    help="A bulk load: it travels in the bulk lane, behind live events and shared with "
    "other tenants' bulk loads in turn.",
)
def enqueue(file: click.utils.LazyFile, bulk: bool) -> None:
    """Validate and enqueue the events of FILE (`-` for stdin): a JSON object, a JSON array
    or JSON Lines. Each invalid event is reported with its line or item number; the valid
    ones are enqueued all the same, in order, in messages of up to 100 events. Exits 1 if
    any was invalid. They travel as live events unless --bulk."""
    from worker.producer import MAX_BATCH, BrokerUnavailable, enqueue_many, validate

    valid: list[tuple[str, Any]] = []
    invalid = 0
    for label, payload, error in read_payloads(file.read()):
        if error is None:
            # Validated here, not by enqueue_many, so each refusal keeps its own label.
            try:
                validate(payload)
                valid.append((label, payload))
                continue
            except InvalidEvent as exc:
                error = str(exc)
        invalid += 1
        click.echo(f"{label}: {error}", err=True)
    enqueued = 0
    for start in range(0, len(valid), MAX_BATCH):
        batch = valid[start : start + MAX_BATCH]
        try:
            enqueue_many((payload for _, payload in batch), bulk=bulk)
        except BrokerUnavailable as exc:
            # Say where it stopped: what came before is enqueued, so a caller can resume
            # there (or resend everything: copies are skipped as duplicates).
            click.echo(f"enqueued {enqueued} event(s), {invalid} invalid")
            label = batch[0][0]
            rest = "the event was" if label == "event" else f"{label} and all after it were"
            fail(f"{exc}; {rest} not enqueued")
        enqueued += len(batch)
    click.echo(f"enqueued {enqueued} event(s), {invalid} invalid")
    if invalid:
        sys.exit(1)
