"""The ``prefsync`` command: run the worker, enqueue events, manage connector configs and
dead letters, read the counters.

Exit codes: 0 success, 1 something in the input was refused (each refusal is printed),
2 the command could not run (bad usage, Redis unreachable).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

import click
import redis

from worker.connectors import CONNECTORS
from worker.core.errors import InvalidConfig, InvalidEvent, PermanentError
from worker.core.payloads import read_payloads
from worker.infra.settings import InvalidSettings, get_settings
from worker.queue.lanes import BULK, LANES, LIVE, queues

if TYPE_CHECKING:
    from worker.connectors.model import ConnectorConfig


def _runtime():  # imported late: `prefsync --help` must work without Redis or Celery set up
    from worker.delivery.runtime import runtime

    return runtime()


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _redis_help(url: str, exc: redis.exceptions.RedisError | None = None) -> str:
    from worker.infra.redis_client import problem, redacted_url

    if exc is not None and (known := problem(url, exc)):
        return known
    return (
        f"nothing answers at {redacted_url(url)}. Start a Redis first: `redis-server` "
        "(or `docker compose up redis`), or point PREFSYNC_REDIS_URL at one."
    )


class ReportRedisErrors(click.Group):
    """Turn an unreachable Redis into one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            fail(_redis_help(get_settings().redis_url, exc))
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
    """


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--concurrency", "-c", default=None, help="Worker processes (default: CPUs).")
@click.option("--loglevel", "-l", default=None, help="Log level (default: PREFSYNC_LOG_LEVEL).")
@click.option(
    "--lane",
    "lanes_",
    multiple=True,
    type=click.Choice(LANES),
    help="Consume only this lane's queues (repeatable; default: both).",
)
@click.option(
    "--destination",
    multiple=True,
    type=click.Choice(sorted(CONNECTORS)),
    help="Deliver only to this destination type (repeatable); no routing.",
)
@click.option(
    "--without-destination",
    multiple=True,
    type=click.Choice(sorted(CONNECTORS)),
    help="Everything but deliveries to this destination type (repeatable).",
)
@click.pass_context
def worker(
    ctx: click.Context,
    concurrency: str | None,
    loglevel: str | None,
    lanes_: tuple[str, ...],
    destination: tuple[str, ...],
    without_destination: tuple[str, ...],
) -> None:
    """Run a worker (same as `celery -A worker worker`); extra options go to Celery.
    Without --lane or --destination it consumes every queue, live before bulk
    (docs/delivery.md, "Lanes")."""
    from worker.infra.redis_client import connect

    if destination and without_destination:
        fail("give --destination or --without-destination, not both")
    settings = get_settings()
    try:
        connect(settings, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        fail(_redis_help(settings.redis_url, exc))
    from worker.infra.logging import uses_console

    # Celery's banner is plain text: leave it out where every line must be JSON.
    quiet = [] if uses_console(settings) else ["--quiet"]
    argv = ["celery", "-A", "worker", *quiet, "worker"]
    argv.append(f"--loglevel={loglevel or settings.log_level}")
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if lanes_ or destination or without_destination:
        chosen = queues(tuple(lane for lane in LANES if lane in lanes_) or LANES,
                        only=destination, without=without_destination)  # fmt: skip
        argv.append(f"--queues={','.join(chosen)}")
    os.execvp(sys.executable, [sys.executable, "-m", *argv, *ctx.args])


@main.command("worker-health")
def worker_health() -> None:
    """Check that the worker on this host is consuming: exits 0 while its heartbeat
    (PREFSYNC_HEARTBEAT_FILE) is fresher than PREFSYNC_LIVENESS_TIMEOUT, 1 otherwise. For
    healthchecks and liveness probes; it needs neither Redis nor Celery."""
    import time
    from pathlib import Path

    from worker.queue.liveness import heartbeat_age

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


@main.command()
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


# ---------------------------------------------------------------- connectors


@main.group()
def connectors() -> None:
    """Store, list, show and delete a tenant's connector configs (sealed at rest with
    PREFSYNC_SECRET_KEYS), and rotate the key they are sealed with."""


@connectors.command("put")
@click.argument("tenant")
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--id", "connector_id", help="Connector id, unique in the tenant (default: type).")
def connectors_put(tenant: str, file: click.utils.LazyFile, connector_id: str | None) -> None:
    """Validate the config in FILE (either generation of shape) and store it."""
    from worker.connectors.config import parse_config

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
    """One line per connector: id, type, enabled, upsert, on_user_deleted, mappings,
    credential (masked)."""
    if not _runtime().configs.ids(tenant):
        fail(
            f"tenant {tenant!r} has no connectors (unknown tenant, or a typo?); "
            f"store one with `prefsync connectors put {tenant} FILE`",
            1,
        )
    for connector_id in _runtime().configs.ids(tenant):
        try:
            config = _runtime().configs.get(tenant, connector_id)
        except InvalidConfig as exc:
            click.echo(f"{connector_id}\tINVALID: {'; '.join(str(exc).splitlines())}")
            continue
        if config is None:
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
    """Whether each stored config of TENANT still validates, and for each of its mappings
    when it last matched an event ("never": the property it names never had a value in
    an event the worker saw since). Exits 1 if a config is invalid."""
    store = _runtime().configs
    invalid = never = 0
    connector_ids = store.ids(tenant)
    if not connector_ids:
        click.echo(f"tenant {tenant!r} has no connectors")
    for connector_id in connector_ids:
        try:
            config = store.get(tenant, connector_id)
        except InvalidConfig as exc:
            invalid += 1
            click.echo(f"{connector_id}: INVALID, every event for it is dead-lettered")
            for line in str(exc).splitlines():
                click.echo(f"  {line}")
            continue
        if config is None:
            continue
        click.echo(f"{config.id} ({config.type_id}): valid")
        for line, matched in _mapping_lines(tenant, config):
            never += matched is None
            click.echo(f"  {line}")
    click.echo(f"{invalid} invalid config(s), {never} mapping(s) never matched an event")
    if invalid:
        sys.exit(1)


def _mapping_lines(tenant: str, config: ConnectorConfig) -> list[tuple[str, float | None]]:
    """One line per mapping of ``config``: id, property, when it last matched an event."""
    times = _runtime().recorder.last_matched(tenant, config)
    return [
        (
            f"{mapping.id} <- {mapping.value}: "
            + ("never matched" if at is None else f"last matched {_when(at)}"),
            at,
        )
        for mapping, at in zip(config.mappings, times, strict=True)
    ]


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
    _runtime().recorder.forget_matches(tenant, connector_id)
    click.echo(f"deleted connector {connector_id!r} of tenant {tenant!r}")


@connectors.command("reencrypt")
def connectors_reencrypt() -> None:
    """Seal every stored config again under the first key of PREFSYNC_SECRET_KEYS: after a
    new key was put first (rotation), or for configs stored before sealing existed. Safe
    to run again; a config put meanwhile is left as it is (already current)."""
    try:
        changed, current = _runtime().configs.reencrypt()
    except InvalidConfig as exc:
        fail(str(exc), 1)
    click.echo(f"re-encrypted {changed} config(s), {current} already under the first key")


@connectors.command("new-key")
def connectors_new_key() -> None:
    """Print a new key for PREFSYNC_SECRET_KEYS (put it first to rotate, then run
    `prefsync connectors reencrypt`, then drop the old key)."""
    from worker.infra.sealing import new_key

    click.echo(new_key())


@main.command("redis-acl")
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
    listed = 0
    for e in _runtime().deadletters.iter(tenant=tenant, connector_id=connector):
        listed += 1
        click.echo(
            f"{e.id}\t{e.tenant}\t{e.connector_id or '-'}\t{e.user}\t{e.reason}\t"
            f"{_when(e.dead_lettered_at)}"
        )
    click.echo(f"{listed} dead letter(s)")


@dlq.command("show")
@click.argument("entry_id")
def dlq_show(entry_id: str) -> None:
    """One entry as JSON: the event, every attempt, the reason."""
    from worker.records.deadletter import dumps

    entry = _runtime().deadletters.get(entry_id)
    if entry is None:
        fail(f"no dead letter {entry_id!r}", 1)
    click.echo(dumps(entry))


def _select(ids: tuple[str, ...], all_: bool, tenant: str | None) -> Iterable:
    """The entries named, or every one (of a tenant), streamed a page at a time."""
    store = _runtime().deadletters
    if sum([bool(ids), all_, tenant is not None]) != 1:
        fail("name entry ids, or --all, or --tenant T (exactly one of them)")
    if ids:
        entries = [store.get(i) for i in ids]
        missing = [i for i, e in zip(ids, entries, strict=True) if e is None]
        if missing:
            fail(f"no dead letter {', '.join(missing)}", 1)
        return entries
    return store.iter(tenant=tenant)


@dlq.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every entry.")
@click.option("--tenant", help="Replay every entry of this tenant.")
def dlq_replay(ids: tuple[str, ...], all_: bool, tenant: str | None) -> None:
    """Re-enqueue entries through the normal path. An entry is removed once its event is
    enqueued; if it fails again it comes back as a new entry. Entries named by id travel
    as live events; --all and --tenant in the bulk lane, behind live events."""
    from worker.producer import enqueue as enqueue_all
    from worker.producer import redeliver
    from worker.records.deadletter import replay

    lane = LIVE if ids else BULK

    def enqueue(entry) -> str:
        if entry.connector_id:
            return redeliver(entry.payload, entry.connector_id, lane)
        return enqueue_all(entry.payload, lane)

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
    from worker.delivery.preview import broken
    from worker.delivery.preview import preview as make_preview
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
@click.option("--user", help="Only this person (their organization_user_id; it is hashed).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit(tenant: str, user: str | None, limit: int, as_json: bool) -> None:
    """What each destination was told about a tenant's people, and when (newest first):
    time, connector, person, outcome, reason or HTTP status, fields written.

    A person is shown as the keyed hash of their id (PREFSYNC_USER_HASH_KEY), never the
    id: the trail outlives their erasure (docs/erasure.md). --user takes the id and
    hashes it."""
    rt = _runtime()
    person = None if user is None else rt.pseudonyms.user(user)
    entries = rt.audit.query(tenant, user=person, limit=limit)
    if not entries:
        if not rt.configs.ids(tenant) and not rt.audit.length(tenant):
            fail(f"unknown tenant {tenant!r}: no connectors and no audit entries", 1)
        whom = f"user {user!r} of tenant {tenant!r}" if user else f"tenant {tenant!r}"
        click.echo(f"no audit entries for {whom} yet", err=True)
    for entry in entries:
        if as_json:
            click.echo(entry.model_dump_json())
            continue
        why = entry.reason or (f"HTTP {entry.status}" if entry.status else "")
        written = json.dumps(entry.fields, ensure_ascii=False) if entry.fields else ""
        click.echo(
            f"{_when(entry.at)}\t{entry.connector_id}\t{entry.user}\t{entry.outcome}\t"
            f"{why}\t{written}"
        )


# ---------------------------------------------------------------- erasure


@main.command()
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
    rt = _runtime()
    try:
        task_id = enqueue(request(tenant, user, rt.clock.now()))
    except InvalidEvent as exc:
        fail(f"cannot erase: {exc}", 1)
    click.echo(
        f"erasure of the person {rt.pseudonyms.user(user)} in tenant {tenant!r} enqueued "
        f"(task {task_id}); follow it with `prefsync audit {tenant} --user ...`"
    )


# ---------------------------------------------------------------- a person's state


@main.group()
def state() -> None:
    """What prefsync believes about one person: the newest known value of each property
    (newest wins) and the fields it feeds, per connector."""


@state.command("show")
@click.argument("tenant")
@click.argument("user")
def state_show(tenant: str, user: str) -> None:
    """The newest known value of each of USER's properties (when, version, from which
    event) and, per connector of TENANT, the fields they feed (Braze email_subscribe...)
    as computed now and as last delivered."""
    from worker.delivery.deliverer import fed_state

    rt = _runtime()
    known = rt.state.known(tenant, user)
    if not known:
        click.echo(f"nothing known about {user!r} in tenant {tenant!r}")
    else:
        click.echo("property\tvalue\tdated\tversion\tfrom event")
    for name, item in sorted(known.items()):
        version = "-" if item.version is None else str(item.version)
        click.echo(
            f"{name}\t{json.dumps(item.value)}\t{_when(item.timestamp_us / 1e6)}\t"
            f"{version}\t{item.event_key}"
        )
    current = {name: item.value for name, item in known.items()}
    for config in _configs(tenant):
        delivered = rt.state.delivered(tenant, config.id, user)
        try:
            fed = fed_state(config, current)
        except PermanentError as exc:
            fed = {"(refused)": str(exc)}
        for name in sorted(fed.keys() | delivered.keys()):
            now = json.dumps(fed.get(name))
            told = json.dumps(delivered.get(name))
            click.echo(f"connector {config.id}\t{name}\tnow {now}\tlast delivered {told}")


@state.command("forget")
@click.argument("tenant")
@click.argument("user")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (for scripts).")
def state_forget(tenant: str, user: str, yes: bool) -> None:
    """Reset what prefsync believes about USER (for a state a mis-dated event poisoned):
    the newest-wins state and the fields last delivered to each connector. The next
    event of the person is then taken as the newest. Events that already ended stay
    ended: what each connector was told, and the erasure tombstone, are kept."""
    if not yes and not click.confirm(f"forget the state of {user!r} in tenant {tenant!r}?"):
        fail("nothing forgotten", 1)
    rt = _runtime()
    removed = rt.state.forget(tenant, user, rt.configs.ids(tenant))
    click.echo(f"forgot {removed} record(s) of {user!r} in tenant {tenant!r}")


def _configs(tenant: str) -> list:
    """The tenant's connector configs that still validate."""
    store = _runtime().configs
    configs = []
    for connector_id in store.ids(tenant):
        try:
            config = store.get(tenant, connector_id)
        except InvalidConfig:
            continue
        if config is not None:
            configs.append(config)
    return configs


# ---------------------------------------------------------------- numbers


@main.command()
@click.option("--tenant", help="Only this tenant.")
@click.option("--connector", help="Only this connector (needs --tenant).")
@click.option(
    "--mappings",
    "show_mappings",
    is_flag=True,
    help="Then, per connector, when each mapping last matched an event (needs --tenant).",
)
def stats(tenant: str | None, connector: str | None, show_mappings: bool) -> None:
    """Outcome counters (delivered, skipped by reason, dead-lettered: since the start),
    then the backlog now, for all tenants: messages queued, retries waiting, outbox
    entries, dead letters (and per tenant, their count and bytes), and how long the oldest
    unfinished task has been due. With --mappings, when each mapping last matched."""
    from worker.core.retries import clock
    from worker.records.metrics import read_backlog

    if connector and not tenant:
        fail("--connector needs --tenant")
    if show_mappings and not tenant:
        fail("--mappings needs --tenant")
    rt = _runtime()
    counts = rt.recorder.counts(tenant, connector)
    click.echo("outcome\tcount")
    if not counts:
        click.echo("no outcomes recorded yet")
    for name, value in counts.items():
        click.echo(f"{name}\t{value}")
    backlog = read_backlog(rt.redis, queues(), rt.settings.visibility_timeout, clock())
    click.echo("\nbacklog (all tenants)\tnow")
    click.echo(f"queue depth\t{backlog.queue_depth}")
    for name, parked in rt.feeder.parked().items():
        if tenant is None or name == tenant:
            click.echo(f"bulk messages parked for {name}\t{parked}")
    click.echo(f"retries waiting\t{backlog.retries_waiting}")
    click.echo(f"outbox entries\t{backlog.outbox}")
    click.echo(f"dead letters\t{backlog.dead_letters} ({backlog.dead_letter_bytes:,} bytes)")
    click.echo(f"oldest waiting (s)\t{backlog.oldest_waiting:.1f}")
    for name, (count, size) in rt.deadletters.kept().items():
        if tenant is None or name == tenant:
            click.echo(f"dead letters of {name}\t{count} ({size:,} bytes)")
    if show_mappings:
        # A mapping that never matches an event is visible here (and in `connectors check`).
        store = rt.configs
        for connector_id in [connector] if connector else store.ids(tenant):
            try:
                config = store.get(tenant, connector_id)
            except InvalidConfig:
                click.echo(
                    f"mappings of {connector_id}: config INVALID (prefsync connectors check)"
                )
                continue
            if config is not None:
                click.echo(f"mappings of {connector_id}:")
                for line, _ in _mapping_lines(tenant, config):
                    click.echo(f"  {line}")


# ---------------------------------------------------------------- the HTTP ingress


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes (each with its own event loop); one takes thousands of webhooks/s.",
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the HTTP ingress the PMP calls: POST /webhooks, POST /oauth/token, GET /healthz,
    /readyz and /metrics (docs/ingress.md). Credentials: `prefsync ingress add TENANT`."""
    import uvicorn

    from worker.infra.logging import configure
    from worker.infra.redis_client import connect

    settings = get_settings()
    try:
        connect(settings, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        fail(_redis_help(settings.redis_url, exc))
    configure(settings)
    uvicorn.run(
        "worker.ingress.app:serve_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        # X-Forwarded-For is believed only from PREFSYNC_INGRESS_TRUSTED_PROXIES (ours),
        # never from uvicorn's default of any local peer.
        proxy_headers=False,
        server_header=False,
        # An access log line per webhook would cost a fifth of the throughput; /metrics
        # counts the answers.
        access_log=False,
        log_config=None,
        timeout_keep_alive=75,  # longer than the PMP's or a load balancer's idle timeout
    )


@main.group()
def ingress() -> None:
    """Credentials a PMP (or another producer) uses to call the ingress: add, list, revoke."""


def _credentials():
    from worker.ingress.credentials import CredentialStore

    rt = _runtime()
    return CredentialStore(rt.redis, rt.settings.ingress_token_ttl)


@ingress.command("add")
@click.argument("tenant")
@click.option("--json", "as_json", is_flag=True, help="Print the credential as JSON.")
def ingress_add(tenant: str, as_json: bool) -> None:
    """Create a credential for TENANT. Its secret is shown this once: only a hash is kept.
    Give the PMP the client id and secret, and the token URL http(s)://HOST/oauth/token."""
    client, secret = _credentials().add(tenant)
    if as_json:
        document = {"tenant": tenant, "client_id": client.client_id, "client_secret": secret}
        click.echo(json.dumps(document))
        return
    click.echo(f"tenant         {tenant}")
    click.echo(f"client id      {client.client_id}")
    click.echo(f"client secret  {secret}")
    click.echo("The secret is shown once and cannot be shown again; keep it now.")


@ingress.command("list")
@click.argument("tenant")
def ingress_list(tenant: str) -> None:
    """TENANT's credentials: client id, secret (masked: only its hash is kept), created."""
    clients = _credentials().list(tenant)
    click.echo("client_id\tclient_secret\tcreated")
    for client in clients:
        click.echo(f"{client.client_id}\t********\t{_when(client.created_at)}")
    if not clients:
        click.echo(f"tenant {tenant!r} has no ingress credentials", err=True)


@ingress.command("revoke")
@click.argument("tenant")
@click.argument("client_id")
def ingress_revoke(tenant: str, client_id: str) -> None:
    """Delete a credential: its secret and the tokens issued for it stop working (within
    PREFSYNC_INGRESS_AUTH_CACHE seconds on every ingress process)."""
    if not _credentials().revoke(tenant, client_id):
        fail(f"tenant {tenant!r} has no ingress credential {client_id!r}", 1)
    click.echo(f"revoked {client_id} of tenant {tenant!r}")
