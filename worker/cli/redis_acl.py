"""`prefsync redis-acl`: a Redis ACL file with one user per component."""

from __future__ import annotations

import os

import click

from worker.cli.common import fail


@click.command("redis-acl")
def redis_acl() -> None:
    """Print a Redis ACL file with one user per component (worker, producer, flower,
    admin), each allowed only what its job needs; the passwords come from
    REDIS_WORKER_PASSWORD, REDIS_PRODUCER_PASSWORD, REDIS_FLOWER_PASSWORD and
    REDIS_ADMIN_PASSWORD (a component without one gets no user) and are written as SHA-256
    hashes. Use it as Redis's aclfile: docs/security.md."""
    from worker.infra.redis_acl import COMPONENTS, render

    passwords = {
        name: os.environ[f"REDIS_{name.upper()}_PASSWORD"]
        for name in COMPONENTS
        if os.environ.get(f"REDIS_{name.upper()}_PASSWORD")
    }
    if not passwords:
        fail("set REDIS_<COMPONENT>_PASSWORD for at least one of: " + ", ".join(COMPONENTS))
    click.echo(render(passwords), nl=False)
