"""The ``prefsync`` command: run the worker, enqueue events, manage connector configs and
dead letters, read the counters.

Exit codes: 0 success, 1 something in the input was refused (each refusal is printed),
2 the command could not run (bad usage, Redis unreachable).
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterator
from typing import Any, NoReturn

import click
import redis

from worker.errors import InvalidConfig, InvalidEvent
from worker.settings import InvalidSettings, get_settings


def _runtime():  # imported late: `prefsync --help` must work without Redis or Celery set up
    from worker.runtime import runtime

    return runtime()


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _redis_help(url: str) -> str:
    from worker.redis_client import redacted_url

    return (
        f"nothing answers at {redacted_url(url)}. Start a Redis first: `redis-server` "
        "(or `docker compose up redis`), or point PREFSYNC_REDIS_URL at one."
    )


class ReportRedisErrors(click.Group):
    """Turn an unreachable Redis into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            fail(_redis_help(get_settings().redis_url))
        except InvalidSettings as exc:
            fail(str(exc))


@click.group(cls=ReportRedisErrors)
def main() -> None:
    """prefsync: carries consent and preference changes to Braze and Brevo (Sendinblue).

    Settings come from PREFSYNC_* environment variables (see docs/operations.md).
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", default=None, help="Worker processes (default: CPUs).")
@click.option("--loglevel", "-l", default=None, help="Log level (default: PREFSYNC_LOG_LEVEL).")
@click.pass_context
def worker(ctx: click.Context, concurrency: str | None, loglevel: str | None) -> None:
    """Run a worker (same as `celery -A worker worker`); extra options go to Celery."""
    from worker.redis_client import connect

    settings = get_settings()
    try:
        connect(settings, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError:
        fail(_redis_help(settings.redis_url))
    from worker.logging import uses_console

    # Celery's banner is plain text: leave it out where every line must be JSON.
    quiet = [] if uses_console(settings) else ["--quiet"]
    argv = ["celery", "-A", "worker", *quiet, "worker"]
    argv.append(f"--loglevel={loglevel or settings.log_level}")
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    os.execvp(sys.executable, [sys.executable, "-m", *argv, *ctx.args])


@main.command("worker-health")
def worker_health() -> None:
    """Check that the worker on this host is consuming: exits 0 while its heartbeat
    (PREFSYNC_HEARTBEAT_FILE) is fresher than PREFSYNC_LIVENESS_TIMEOUT, 1 otherwise. For
    healthchecks and liveness probes; it needs neither Redis nor Celery."""
    import time
    from pathlib import Path

    from worker.liveness import heartbeat_age

    settings = get_settings()
    path = Path(settings.heartbeat_file)
    age = heartbeat_age(path, time.time())
    if age is None:
        fail(f"no heartbeat in {path}: the worker has not started, or writes elsewhere", 1)
    if age > settings.liveness_timeout:
        fail(
            f"the worker stopped consuming: its last heartbeat is {age:.0f}s old "
            f"(PREFSYNC_LIVENESS_TIMEOUT: {settings.liveness_timeout:g}s)",
            1,
        )
    click.echo(f"ok: heartbeat {age:.1f}s ago")


# ---------------------------------------------------------------- enqueue


def read_text(file: click.utils.LazyFile) -> str:
    try:
        return file.read()
    except UnicodeDecodeError as exc:
        fail(f"{file.name}: not UTF-8 text (byte {exc.start})", 1)


def read_payloads(data: bytes) -> Iterator[tuple[str, Any, str | None]]:
    """Yield (label, payload, error) for each event of a JSON object, JSON array or
    JSON Lines input; labels are "item N" (array) or "line N" (JSON Lines), 1-based.

    JSON Lines are judged one line at a time, so a line that is not UTF-8 or not JSON
    costs that line only."""
    # Undecodable bytes become lone surrogates, which valid UTF-8 text never holds, so a
    # line can still tell that it had one, and where.
    text = data.decode("utf-8", errors="surrogateescape")
    stripped = text.strip()
    if not stripped:
        yield "input", None, "no event found (empty input)"
        return
    one_line = "\n" not in stripped
    try:
        document = json.loads(stripped)
    except (ValueError, RecursionError) as exc:
        if one_line:
            yield "line 1", None, _utf8_error(stripped) or _json_error(exc)
            return
        document = _JSON_LINES
    if document is not _JSON_LINES:
        if error := _utf8_error(stripped):
            yield "line 1" if one_line else "input", None, error
        elif isinstance(document, list):
            for number, item in enumerate(document, start=1):
                yield f"item {number}", item, None
        else:
            yield "event", document, None
        return
    # Only "\n" ends a line: str.splitlines() also splits at U+2028, U+0085 and other
    # characters a JSON string may hold as they are, which would cut one event in two.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if error := _utf8_error(line):
            yield f"line {number}", None, error
            continue
        try:
            yield f"line {number}", json.loads(line), None
        except (ValueError, RecursionError) as exc:
            yield f"line {number}", None, _json_error(exc)


_JSON_LINES = object()  # the input is not one JSON document


def _json_error(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "not valid JSON (nested too deeply)"
    # An integer longer than Python converts (sys.get_int_max_str_digits()).
    return f"not valid JSON ({str(exc).split(';')[0]})"


_UNDECODED = re.compile("[\udc80-\udcff]")  # what surrogateescape made of a bad byte


def _utf8_error(text: str) -> str | None:
    if bad := _UNDECODED.search(text):
        offset = len(text[: bad.start()].encode("utf-8", errors="surrogateescape"))
        return f"not UTF-8 text (byte {offset})"
    return None


@main.command()
@click.argument("file", type=click.File("rb"))
def enqueue(file: click.utils.LazyFile) -> None:
    """Validate and enqueue the events of FILE (`-` for stdin): a JSON object, a JSON array
    or JSON Lines. Each invalid event is reported with its line or item number; the valid
    ones are enqueued all the same, in order, in messages of up to 100 events. Exits 1 if
    any was invalid."""
    from worker.errors import BrokerUnavailable
    from worker.producer import MAX_BATCH, enqueue_many, validate

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
            enqueue_many(payload for _, payload in batch)
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


# ---------------------------------------------------------------- connectors


@main.group()
def connectors() -> None:
    """Store, list, show and delete a tenant's connector configs."""


@connectors.command("put")
@click.argument("tenant")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--id", "connector_id", help="Connector id, unique in the tenant (default: type).")
def connectors_put(tenant: str, file: click.utils.LazyFile, connector_id: str | None) -> None:
    """Validate the config in FILE (either generation of shape) and store it."""
    from worker.configs import parse_config

    try:
        raw = json.loads(read_text(file))
    except json.JSONDecodeError as exc:
        fail(f"{file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", 1)
    try:
        config = parse_config(
            raw, connector_id=connector_id, allow_hosts=get_settings().allow_hosts
        )
    except InvalidConfig as exc:
        fail(f"config refused: {exc}", 1)
    _runtime().configs.put(tenant, config)
    click.echo(f"stored connector {config.id!r} ({config.type_id}) for tenant {tenant!r}")


@connectors.command("list")
@click.argument("tenant")
def connectors_list(tenant: str) -> None:
    """One line per connector: id, type, enabled, upsert, mappings, credential (masked)."""
    for connector_id in _runtime().configs.ids(tenant):
        try:
            config = _runtime().configs.get(tenant, connector_id)
        except InvalidConfig as exc:
            click.echo(f"{connector_id}\tBROKEN: {exc}")
            continue
        if config is None:
            continue
        secrets = " ".join(f"{k}={v}" for k, v in config.describe()["authentication"].items())
        click.echo(
            f"{config.id}\t{config.type_id}\t{'enabled' if config.enabled else 'disabled'}\t"
            f"upsert={'on' if config.upsert_mode else 'off'}\t"
            f"mappings={len(config.mappings)}\t{secrets}"
        )


@connectors.command("show")
@click.argument("tenant")
@click.argument("connector_id")
def connectors_show(tenant: str, connector_id: str) -> None:
    """The stored config as JSON, credentials masked."""
    config = _runtime().configs.get(tenant, connector_id)
    if config is None:
        fail(f"tenant {tenant!r} has no connector {connector_id!r}", 1)
    click.echo(json.dumps(config.describe(), indent=2, ensure_ascii=False))


@connectors.command("delete")
@click.argument("tenant")
@click.argument("connector_id")
def connectors_delete(tenant: str, connector_id: str) -> None:
    """Delete a connector config."""
    if not _runtime().configs.delete(tenant, connector_id):
        fail(f"tenant {tenant!r} has no connector {connector_id!r}", 1)
    click.echo(f"deleted connector {connector_id!r} of tenant {tenant!r}")


# ---------------------------------------------------------------- dead letters


@main.group()
def dlq() -> None:
    """Inspect, replay and purge dead-lettered deliveries."""


def _when(epoch: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


@dlq.command("list")
@click.option("--tenant", help="Only this tenant's entries.")
@click.option("--connector", help="Only this connector id's entries.")
def dlq_list(tenant: str | None, connector: str | None) -> None:
    """One line per entry: id, tenant, connector, user, reason, when; then the count."""
    entries = _runtime().deadletters.list(tenant=tenant, connector_id=connector)
    for e in entries:
        click.echo(
            f"{e.id}\t{e.tenant}\t{e.connector_id or '-'}\t{e.user}\t{e.reason}\t"
            f"{_when(e.dead_lettered_at)}"
        )
    click.echo(f"{len(entries)} dead letter(s)")


@dlq.command("show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """One entry as JSON: the event, every attempt, the reason."""
    from worker.deadletter import dumps

    entry = _runtime().deadletters.get(entry_id)
    if entry is None:
        fail(f"no dead letter {entry_id!r}", 1)
    click.echo(dumps(entry))


def _select(ids: tuple[str, ...], all_: bool, tenant: str | None) -> list:
    store = _runtime().deadletters
    if sum([bool(ids), all_, tenant is not None]) != 1:
        fail("name entry ids, or --all, or --tenant T (exactly one of them)")
    if ids:
        entries = [store.get(i) for i in ids]
        missing = [i for i, e in zip(ids, entries, strict=True) if e is None]
        if missing:
            fail(f"no dead letter {', '.join(missing)}", 1)
        return entries
    return store.list(tenant=tenant)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every entry.")
@click.option("--tenant", help="Replay every entry of this tenant.")
def dlq_replay(ids: tuple[str, ...], all_: bool, tenant: str | None) -> None:
    """Re-enqueue entries through the normal path. An entry is removed once its event is
    enqueued; if it fails again it comes back as a new entry."""
    from worker.deadletter import replay
    from worker.producer import enqueue as enqueue_all
    from worker.producer import redeliver

    def enqueue(entry) -> str:
        if entry.connector_id:
            return redeliver(entry.payload, entry.connector_id)
        return enqueue_all(entry.payload)

    done, failed = replay(_runtime().deadletters, _select(ids, all_, tenant), enqueue)
    for entry, error in failed:
        click.echo(f"{entry.id}: not replayed: {error}", err=True)
    click.echo(f"replayed {len(done)} dead letter(s), {len(failed)} failed")
    if failed:
        sys.exit(1)


@dlq.command("purge")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every entry.")
def dlq_purge(ids: tuple[str, ...], all_: bool) -> None:
    """Delete entries for good."""
    store = _runtime().deadletters
    entries = _select(ids, all_, None)
    removed = sum(store.remove(e.id) for e in entries)
    click.echo(f"purged {removed} dead letter(s)")


# ---------------------------------------------------------------- preview


@main.command()
@click.argument("tenant")
@click.argument("event_file", type=click.File("r", encoding="utf-8"))
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON.")
def preview(tenant: str, event_file: click.utils.LazyFile, as_json: bool) -> None:
    """Dry run: for each of TENANT's connectors, the properties the event in EVENT_FILE
    gives its mappings and the exact HTTP requests the worker would send (keys masked), or
    why it would skip. Nothing is sent. A request listed second is a fallback (Brevo's
    create after a 404 when upsert is on)."""
    from worker.preview import broken
    from worker.preview import preview as make_preview
    from worker.producer import validate

    text = read_text(event_file)
    try:
        event = validate(json.loads(text))
    except json.JSONDecodeError as exc:
        fail(f"{event_file.name}: not valid JSON ({exc.msg} at line {exc.lineno})", 1)
    except InvalidEvent as exc:
        fail(f"{event_file.name}: {exc}", 1)
    if event.tenant != tenant:
        fail(f"the event belongs to tenant {event.tenant!r}, not {tenant!r}", 1)
    store = _runtime().configs
    previews = []
    for connector_id in store.ids(tenant):
        try:
            config = store.get(tenant, connector_id)
        except InvalidConfig as exc:
            previews.append(broken(connector_id, exc))
            continue
        if config is not None:
            previews.append(make_preview(event, config))
    if as_json:
        click.echo(json.dumps([p.as_dict() for p in previews], indent=2, ensure_ascii=False))
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


# ---------------------------------------------------------------- audit


@main.command()
@click.argument("tenant")
@click.option("--user", help="Only this person (their organization_user_id).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(tenant: str, user: str | None, limit: int, as_json: bool) -> None:
    """What each destination was told about a tenant's people, and when (newest first):
    time, connector, user, outcome, reason or HTTP status, fields written."""
    for entry in _runtime().audit.query(tenant, user=user, limit=limit):
        if as_json:
            click.echo(entry.model_dump_json())
            continue
        why = entry.reason or (f"HTTP {entry.status}" if entry.status else "")
        written = json.dumps(entry.fields, ensure_ascii=False) if entry.fields else ""
        click.echo(
            f"{_when(entry.at)}\t{entry.connector_id}\t{entry.user}\t{entry.outcome}\t"
            f"{why}\t{written}"
        )


# ---------------------------------------------------------------- numbers


@main.command()
@click.option("--tenant", help="Only this tenant.")
@click.option("--connector", help="Only this connector (needs --tenant).")
def stats(tenant: str | None, connector: str | None) -> None:
    """Outcome counters: delivered, skipped (by reason), dead-lettered."""
    if connector and not tenant:
        fail("--connector needs --tenant")
    counts = _runtime().recorder.counts(tenant, connector)
    if not counts:
        click.echo("no outcomes recorded yet")
    for name, value in counts.items():
        click.echo(f"{name}\t{value}")


if __name__ == "__main__":
    main()
