"""`prefsync backfill`: every user of the PMP, or of an export file, enqueued as a full-state
change for a tenant's connectors (docs/two-way-consent.md#backfill)."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import click

from worker.cli.common import echo_json, fail, runtime
from worker.core.errors import InvalidConfig, PrefsyncError

if TYPE_CHECKING:
    # Imported when run: `prefsync --help` must not load the producer (Celery).
    from worker.backfill import Progress


_CONTINUE = "run it again with --resume to continue after the last page enqueued"


@click.command()
@click.argument("tenant")
@click.option(
    "--connector",
    "connector_ids",
    multiple=True,
    metavar="ID",
    help="Tell only this connector (repeat for more); default: all of the tenant's.",
)
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the users from this export file (JSON lines, gzip or not) instead of the PMP's API.",
)
@click.option("--resume", is_flag=True, help="Continue after the last page a run enqueued.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
def backfill(
    tenant: str, connector_ids: tuple[str, ...], path: Path | None, resume: bool, as_json: bool
) -> None:
    """Enqueue every user of TENANT's PMP (or of --file) on the bulk lane as a full-state
    change dated at the user's updated_at. Newest wins: a newer event is never overridden,
    and a second run sends nothing new. Exits 1 if any user was refused."""
    from worker import backfill as run
    from worker.producer import BrokerUnavailable

    rt = runtime()
    known = rt.configs.ids(tenant)
    if not known:
        fail(f"tenant {tenant!r} has no connectors: store one with `prefsync connectors put`", 1)
    if unknown := [cid for cid in connector_ids if cid not in known]:
        fail(f"tenant {tenant!r} has no connector {', '.join(map(repr, unknown))}", 1)
    positions = run.Positions(rt.redis, tenant)
    progress = run.Progress()
    if path is None:
        try:
            credentials = rt.pmp.get(tenant)
        except InvalidConfig as exc:
            fail(str(exc), 1)
        if credentials is None:
            fail(f"tenant {tenant!r} has no PMP credentials: store them with `prefsync pmp put`")
        source = "pmp"
        pages = partial(run.pmp_pages, rt.pmp_client, credentials)
    else:
        source = f"file:{path.resolve()}"
        pages = partial(run.file_pages, path)
        try:
            progress.total = run.count_lines(path)
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            fail(f"{path}: not a readable export file ({exc})", 1)
    show = _show_progress if sys.stderr.isatty() else lambda _: None
    try:
        run.backfill(
            tenant,
            pages,
            positions,
            source,
            connectors=connector_ids or None,
            resume=resume,
            progress=progress,
            on_page=show,
        )
    except (BrokerUnavailable, PrefsyncError) as exc:
        _report(progress, as_json)
        fail(f"{exc}; {_CONTINUE}")
    except KeyboardInterrupt:
        _report(progress, as_json)
        fail(f"interrupted; {_CONTINUE}", 130)
    _report(progress, as_json)
    if progress.refused:
        sys.exit(1)


def _show_progress(progress: Progress) -> None:
    eta = progress.eta()
    line = (
        f"read {progress.read}, enqueued {progress.enqueued}, refused {progress.refused}, "
        f"{progress.rate:,.0f} users/s" + ("" if eta is None else f", ETA {eta:,.0f} s")
    )
    click.echo(f"\r{line}", nl=False, err=True)


def _report(progress: Progress, as_json: bool) -> None:
    if sys.stderr.isatty() and progress.read:
        click.echo(err=True)  # ends the progress line
    for refusal in progress.refusals:
        click.echo(refusal, err=True)
    if as_json:
        echo_json(progress.summary())
    else:
        click.echo(
            f"read {progress.read} user(s), enqueued {progress.enqueued}, "
            f"refused {progress.refused}"
        )
