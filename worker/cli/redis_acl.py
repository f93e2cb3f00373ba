"""`prefsync redis-acl`: a Redis ACL file with one user per component, and prefsync's Redis
functions loaded by the admin user."""

from __future__ import annotations

import os

import click
import redis

from worker.cli.common import fail, runtime


@click.command("redis-acl")
@click.option(
    "--db",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="The database of this deployment (the one in PREFSYNC_REDIS_URL): no user may "
    "select another.",
)
@click.option(
    "--load-functions",
    is_flag=True,
    help="Instead of printing the file, load this release's Redis functions (prefsync's "
    "scripts) into the Redis of PREFSYNC_REDIS_URL, which must name the admin user. Run it "
    "at setup and on every upgrade, before the new workers start.",
)
def redis_acl(db: int, load_functions: bool) -> None:
    """Print a Redis ACL file with one user per component (worker, producer, flower,
    admin), each allowed only what its job needs; the passwords come from
    REDIS_WORKER_PASSWORD, REDIS_PRODUCER_PASSWORD, REDIS_FLOWER_PASSWORD and
    REDIS_ADMIN_PASSWORD (a component without one gets no user) and are written as SHA-256
    hashes. Use it as Redis's aclfile: docs/security.md."""
    if load_functions:
        _load_functions()
        return
    from worker.infra.redis_acl import COMPONENTS, render

    passwords = {
        name: os.environ[f"REDIS_{name.upper()}_PASSWORD"]
        for name in COMPONENTS
        if os.environ.get(f"REDIS_{name.upper()}_PASSWORD")
    }
    if not passwords:
        fail("set REDIS_<COMPONENT>_PASSWORD for at least one of: " + ", ".join(COMPONENTS))
    click.echo(render(passwords, db), nl=False)


def _load_functions() -> None:
    from worker.records import scripts

    try:
        others = scripts.load(runtime().redis)
    except redis.exceptions.NoPermissionError:
        fail(
            "this Redis user may not load functions: run it as the admin user "
            "(PREFSYNC_REDIS_URL=redis://admin:PASSWORD@HOST:PORT/DB)"
        )
    click.echo(f"loaded {scripts.LIBRARY}")
    for name in others:
        click.echo(
            f"also loaded: {name} (an earlier release's; once none of its workers runs: "
            f"redis-cli FUNCTION DELETE {name})"
        )
