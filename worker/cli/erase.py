"""`prefsync erase`: erase a person everywhere, as a user.deleted from the PMP would."""

from __future__ import annotations

import click

from worker.cli.common import fail, runtime
from worker.core.errors import InvalidEvent


@click.command()
@click.argument("tenant")
@click.argument("user")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
def erase(tenant: str, user: str, yes: bool) -> None:
    """Erase USER (their organization_user_id) from TENANT's destinations and from
    prefsync, as a user.deleted from the PMP would: for a request that did not come
    through the PMP. Each connector does what its on_user_deleted says; prefsync then
    forgets the person, keeping a tombstone and the audit trail under a keyed hash
    (docs/erasure.md). Events of the person dated before now are skipped from then on."""
    from worker.producer import enqueue
    from worker.records.erasure import request

    if not yes and not click.confirm(f"erase {user!r} from tenant {tenant!r} everywhere?"):
        fail("nothing erased", 1)
    rt = runtime()
    try:
        task_id = enqueue(request(tenant, user, rt.clock.now()))
    except InvalidEvent as exc:
        fail(f"cannot erase: {exc}", 1)
    click.echo(
        f"erasure of the person {rt.pseudonyms.user(user)} in tenant {tenant!r} enqueued "
        f"(task {task_id}); follow it with `prefsync audit {tenant} --user ...`"
    )
