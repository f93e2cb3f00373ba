"""The ``prefsync`` command: run the worker, enqueue events, manage connector configs and
dead letters, read the counters.

Exit codes: 0 success, 1 something in the input was refused (each refusal is printed),
2 the command could not run (bad usage, Redis unreachable).

Each command group is a module of this package (``common`` holds what they share); this
one gathers them under ``main``.
"""

from __future__ import annotations

from typing import Any

import click
import redis

from worker.cli import (
    audit,
    backfill,
    connectors,
    dlq,
    enqueue,
    erase,
    ingress,
    pmp,
    preview,
    reconcile,
    redis_acl,
    state,
    stats,
    worker,
)
from worker.cli.common import fail, redis_help
from worker.infra.settings import InvalidSettings, get_settings


class ReportRedisErrors(click.Group):
    """Turn an unreachable Redis into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            fail(redis_help(get_settings().redis_url, exc))
        except redis.exceptions.ResponseError as exc:  # a missing database, say
            from worker.infra.redis_client import problem

            if (known := problem(get_settings().redis_url, exc)) is None:
                raise
            fail(known)
        except InvalidSettings as exc:
            fail(str(exc))


@click.group(cls=ReportRedisErrors)
@click.version_option(package_name="prefsync", prog_name="prefsync")
def main() -> None:
    """prefsync: carries consent and preference changes to Braze and Brevo (Sendinblue).

    Settings come from PREFSYNC_* environment variables (see docs/operations.md).
    Results go to stdout (JSON, tables, ids), warnings and errors to stderr.
    """
    from worker.infra.logging import warnings_to_stderr

    warnings_to_stderr()


for command in (
    worker.worker,
    worker.worker_health,
    worker.serve,
    enqueue.enqueue,
    connectors.connectors,
    redis_acl.redis_acl,
    dlq.dlq,
    preview.preview,
    audit.audit,
    erase.erase,
    state.state,
    stats.stats,
    ingress.ingress,
    pmp.pmp,
    backfill.backfill,
    reconcile.reconcile,
):
    main.add_command(command)
