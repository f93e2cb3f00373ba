"""What the command groups share: the error exit, the runtime, reading a JSON file, times,
and a tenant's stored connector configs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from worker.core.errors import InvalidConfig

if TYPE_CHECKING:
    from worker.connectors.model import ConnectorConfig
    from worker.delivery.runtime import Runtime


def runtime() -> Runtime:
    # Imported late: `prefsync --help` must work without Redis or Celery set up.
    from worker.delivery.runtime import runtime as process_runtime

    return process_runtime()


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def redis_help(url: str, exc: redis.exceptions.RedisError | None = None) -> str:
    from worker.infra.redis_client import problem, redacted_url

    if exc is not None and (known := problem(url, exc)):
        return known
    return (
        f"nothing answers at {redacted_url(url)}. Start a Redis first: `redis-server` "
        "(or `docker compose up redis`), or point PREFSYNC_REDIS_URL at one."
    )


def read_json(file: click.utils.LazyFile) -> Any:
    """The JSON document in ``file``; exits 1, naming the file, if it is not UTF-8 text or
    not JSON."""
    try:
        text = file.read()
    except UnicodeDecodeError as exc:
        fail(f"{file.name}: not UTF-8 text (byte {exc.start})", 1)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        fail(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", 1)


def echo_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


def when(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def stored_configs(
    tenant: str, connector_ids: Iterable[str] | None = None
) -> Iterator[tuple[str, ConnectorConfig | None, InvalidConfig | None]]:
    """Each of the tenant's connector configs (or those of ``connector_ids``) by id:
    ``(id, config, None)``, or ``(id, None, why)`` for one that no longer validates. A
    config deleted meanwhile, or never stored, is left out."""
    store = runtime().configs
    for connector_id in store.ids(tenant) if connector_ids is None else connector_ids:
        try:
            config = store.get(tenant, connector_id)
        except InvalidConfig as exc:
            yield connector_id, None, exc
            continue
        if config is not None:
            yield connector_id, config, None


def mapping_lines(tenant: str, config: ConnectorConfig) -> list[tuple[str, float | None]]:
    """One line per mapping of ``config``: id, property, when it last matched an event."""
    times = runtime().recorder.last_matched(tenant, config)
    return [
        (
            f"{mapping.id} <- {mapping.value}: "
            + ("never matched" if at is None else f"last matched {when(at)}"),
            at,
        )
        for mapping, at in zip(config.mappings, times, strict=True)
    ]
