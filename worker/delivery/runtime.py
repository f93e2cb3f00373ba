"""The process-wide objects a worker or the CLI works with, built once from settings.

Built lazily and again after a fork: prefork pool children must not share the parent's
sockets (Redis connections, the HTTP session's pool).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import redis

from worker.connectors import KNOWN_TYPE_IDS, connectors, get_connector
from worker.connectors.base import Connector, ConnectorSettings, Transport
from worker.connectors.pmp import PmpClient
from worker.core.retries import clock, follow
from worker.delivery.deliverer import Deliverer
from worker.delivery.pacing import Pacer
from worker.infra.logging import hide_users_with
from worker.infra.pseudonym import Pseudonyms, load_key
from worker.infra.redis_client import RedisClock, connect
from worker.infra.sealing import Sealer, keys_from
from worker.infra.settings import InvalidSettings, Settings, get_settings
from worker.records.audit import AuditTrail
from worker.records.configs import ConfigStore, Destinations
from worker.records.deadletter import DeadLetterStore
from worker.records.erasure import Erasures
from worker.records.feeder import BulkFeeder
from worker.records.outbox import Outbox
from worker.records.pmp import PmpStore
from worker.records.recorder import OutcomeRecorder
from worker.records.state import StateStore


@dataclass
class Runtime:
    settings: Settings

    @cached_property
    def redis(self) -> redis.Redis:
        return connect(self.settings)

    @cached_property
    def clock(self) -> RedisClock:
        # A connection of its own with short timeouts: reading the clock while Redis is
        # away must not hold a task up for the data connection's timeouts.
        return RedisClock(connect(self.settings, socket_timeout=0.5, socket_connect_timeout=0.5))

    @cached_property
    def sealer(self) -> Sealer:
        configured = self.settings.secret_keys
        keys = keys_from(
            configured.get_secret_value() if configured else None,
            Path(self.settings.dev_key_file).expanduser(),
        )
        # Plain configs open only with the development key: with keys set, one is refused.
        return Sealer(keys, accept_plain=not (configured and configured.get_secret_value().strip()))

    @cached_property
    def connectors(self) -> dict[str, Connector]:
        """The connectors this process delivers with: built with its settings."""
        return connectors(connector_settings(self.settings))

    @cached_property
    def configs(self) -> ConfigStore:
        return ConfigStore(
            self.redis,
            self.sealer,
            allow_hosts=self.settings.allow_hosts,
            connectors=self.connectors,
        )

    @cached_property
    def pmp(self) -> PmpStore:
        """Each tenant's PMP API credentials (sealed like configs)."""
        return PmpStore(self.redis, self.sealer, allow_hosts=self.settings.allow_hosts)

    @cached_property
    def pmp_client(self) -> PmpClient:
        """Calls the PMP's API: a token per tenant, the destinations' HTTP timeout."""
        return PmpClient(Transport(self.settings.http_timeout))

    @cached_property
    def state(self) -> StateStore:
        return StateStore(
            self.redis,
            state_ttl=self.settings.state_ttl,
            idempotency_ttl=self.settings.idempotency_ttl,
            lock_ttl=self.settings.lock_ttl,
            lock_wait=self.settings.pacing_max_sleep,
            pseudonyms=self.pseudonyms,
        )

    @cached_property
    def pseudonyms(self) -> Pseudonyms:
        """Keyed hashes of user ids (worker.infra.pseudonym), with the key of this deployment."""
        return Pseudonyms(load_key(self.redis, self.settings))

    @cached_property
    def erasures(self) -> Erasures:
        configs = self.configs
        return Erasures(self.redis, self.state, self.deadletters, configs.ids, configs.folded_id)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.redis, grace=self.settings.visibility_timeout)

    @cached_property
    def feeder(self) -> BulkFeeder:
        return BulkFeeder(self.redis)

    @cached_property
    def destinations(self) -> Destinations:
        return Destinations(self.configs)

    @cached_property
    def deadletters(self) -> DeadLetterStore:
        return DeadLetterStore(self.redis, warn_count=self.settings.deadletter_warn_count)

    @cached_property
    def recorder(self) -> OutcomeRecorder:
        return OutcomeRecorder(
            self.redis, self.audit, self.pseudonyms, self.settings.metrics_tenant_label
        )

    @cached_property
    def audit(self) -> AuditTrail:
        return AuditTrail(self.redis, maxlen=self.settings.audit_maxlen)

    @cached_property
    def deliverer(self) -> Deliverer:
        return Deliverer(
            self.state,
            self.recorder,
            Transport(self.settings.http_timeout),
            Pacer(self.redis, max_hold=self.settings.rate_limit_max_wait),
            rate_limits(self.settings.rate_limits),
            self.settings.pacing_max_sleep,
        )


def connector_settings(
    settings: Settings, now: Callable[[], float] | None = None
) -> ConnectorSettings:
    """What the connectors read of ``settings``, with the clock every worker shares
    (worker.core.retries.clock) unless ``now`` is given."""
    return ConnectorSettings(
        braze_batch_size=settings.braze_batch_size,
        sendinblue_api_url=settings.sendinblue_api_url,
        rate_limit_max_wait=settings.rate_limit_max_wait,
        clock=now or clock,
        brevo_batch_size=settings.brevo_batch_size,
    )


def rate_limits(configured: Mapping[str, float]) -> dict[str, float]:
    """``PREFSYNC_RATE_LIMITS`` by canonical type id: a limit may name a connector by an
    alias, in any case. Raises ``InvalidSettings`` for a name no connector has.

    Resolved here rather than in the settings, which the connectors' layer sits above."""
    resolved: dict[str, float] = {}
    for name, rate in configured.items():
        connector = get_connector(name)
        if connector is None:
            raise InvalidSettings(
                f"PREFSYNC_RATE_LIMITS: names {name!r}, which is not a connector type "
                f"(known: {', '.join(KNOWN_TYPE_IDS)})"
            )
        resolved[connector.type_id] = rate
    return resolved


_runtime: tuple[int, Runtime] | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime[0] != os.getpid():
        rt = Runtime(get_settings())
        _runtime = (os.getpid(), rt)
        follow(rt.clock.now)
        hide_users_with(lambda: rt.pseudonyms)
    return _runtime[1]
