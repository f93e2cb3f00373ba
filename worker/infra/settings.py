"""Runtime settings, read once from the environment (prefix ``PREFSYNC_``)."""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from worker.core.errors import PrefsyncError
from worker.core.validation import Location, describe

DEFAULT_RETRY_COUNTDOWNS = (10.0, 30.0, 60.0, 90.0, 110.0)
# The levels both Python's logging and Celery's -l accept.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# What PREFSYNC_REDIS_URL may start with (one sentinel:// part per Sentinel, joined by ";").
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")
# PREFSYNC_* variables that are not settings: the test suite's own switches.
NOT_SETTINGS = frozenset({"PREFSYNC_CHAOS", "PREFSYNC_SOAK_FAULTS"})
# The soft time limit comes this long before the hard one: time to write the retry.
SOFT_LIMIT_LEAD = 5
# The least time a task must have left, after one HTTP call, to wait for Redis before its
# soft time limit; with less, a Redis blip would always end in the time limits.
MIN_REDIS_WAIT = 0.5


def _split_commas(value: object) -> object:
    # Lists are comma-separated in the environment; pydantic-settings would expect JSON.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # hide_input_in_errors: a refused value may be a secret (a key, a URL with a password).
    model_config = SettingsConfigDict(
        env_prefix="PREFSYNC_", extra="ignore", hide_input_in_errors=True
    )

    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str = "mymaster"  # with a sentinel:// URL only
    # TLS to Redis (and to the Sentinels): on by itself for a rediss:// URL; for sentinel://
    # URLs set it. The server's certificate is always verified, against this CA bundle
    # when given (else the system's).
    redis_tls: bool = False
    redis_tls_ca_file: str = ""
    sendinblue_api_url: str = "https://api.brevo.com/v3"
    http_timeout: float = Field(10.0, gt=0)
    task_time_limit: int = Field(60, gt=0)
    allow_hosts: Annotated[tuple[str, ...], NoDecode] = ()
    visibility_timeout: int = Field(3600, gt=0)
    retry_countdowns: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_COUNTDOWNS
    retry_jitter: float = Field(0.1, ge=0, lt=1)
    rate_limit_max_wait: float = Field(60.0, ge=0)
    # Calls per second per destination account, by connector type (JSON: {"sendinblue": 20});
    # a type not named keeps its connector's default (Braze 1,000, Brevo 10).
    rate_limits: dict[str, Annotated[float, Field(gt=0)]] = {}
    # Users per Braze /users/track call: 75 is Braze's cap, 50 the cap on newer contracts.
    braze_batch_size: int = Field(50, ge=1, le=75)
    # The longest a worker process sleeps for a rate-limit slot or a busy user before it
    # defers the delivery instead.
    pacing_max_sleep: float = Field(0.5, ge=0)
    idempotency_ttl: int = Field(7 * 24 * 3600, gt=0)
    state_ttl: int = Field(90 * 24 * 3600, gt=0)
    max_event_bytes: int = Field(256 * 1024, gt=0)
    # How far ahead of Redis's clock an event's timestamp may be before it is refused: one
    # mis-dated event would otherwise outrank every later change of that person.
    max_clock_skew: float = Field(300.0, ge=0)
    audit_maxlen: int = Field(1_000_000, gt=0)
    # The key of the keyed hash that stands for a user id wherever prefsync keeps one
    # (worker.infra.pseudonym): unset, one is generated once and kept in Redis.
    user_hash_key: SecretStr | None = None
    # Dead letters of one tenant past which an error is logged (and again every tenth more).
    deadletter_warn_count: int = Field(10_000, gt=0)
    # Fernet keys sealing connector configs at rest, comma-separated: the first seals,
    # every one opens (worker.infra.sealing). Unset: a development key in dev_key_file.
    secret_keys: SecretStr | None = None
    dev_key_file: str = "~/.config/prefsync/secret.key"
    # `prefsync connectors put` seals with the development key only when this says so: a
    # config sealed with one machine's key is dead-lettered by workers holding the real ones.
    allow_dev_key: bool = False
    # Liveness (worker.queue.liveness): the file the worker's heartbeat is written to (one per
    # worker on a host), and how long its main process may stop consuming before it exits
    # and `prefsync worker-health` fails. It must outlast a warm shutdown: the hard time
    # limit plus 10 s.
    heartbeat_file: str = "/tmp/prefsync-worker.heartbeat"
    liveness_timeout: float = Field(120.0, gt=0)
    log_format: Literal["auto", "json", "console"] = "auto"
    # People's ids in log lines: the keyed hash `prefsync audit --user` shows, left out, or
    # as they are (for a developer's machine).
    log_user_ids: Literal["plain", "hash", "omit"] = "hash"
    log_level: str = "INFO"  # one of LOG_LEVELS, in any case
    # The HTTP ingress (worker/ingress, docs/ingress-api.md).
    # Source addresses allowed to call /webhooks and /oauth/token (CIDRs); empty: any.
    ingress_allow_from: Annotated[tuple[str, ...], NoDecode] = ()
    # Proxies whose X-Forwarded-For is believed (CIDRs); from anyone else it is ignored.
    ingress_trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    # Lifetime of an access token from /oauth/token, in seconds.
    ingress_token_ttl: int = Field(3600, gt=0)
    # A request body over this is refused (413) before it is read whole.
    ingress_max_request_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # How long an ingress process trusts a credential it checked in Redis: a revocation
    # takes effect within this many seconds, and a busy ingress reads Redis once per
    # credential per period instead of once per webhook.
    ingress_auth_cache: float = Field(1.0, ge=0)
    # Access tokens one client id is issued per minute, across every ingress process; over
    # it, /oauth/token answers 429 with Retry-After.
    ingress_token_rate: int = Field(60, gt=0)
    # Seconds a connection has to send a request's headers (from connecting, or from the
    # request's first byte), and as long again for its body; then it is closed.
    ingress_read_timeout: float = Field(10.0, gt=0)
    # Connections one ingress process holds (kept below its file-descriptor limit), and
    # those from one address (PREFSYNC_INGRESS_TRUSTED_PROXIES excepted); more are closed.
    ingress_max_connections: int = Field(1000, gt=0)
    ingress_max_connections_per_address: int = Field(100, gt=0)
    # The key access tokens are signed with (with each credential's secret hash), kept out
    # of Redis: unset, whoever reads Redis (a backup) could make tokens.
    ingress_token_key: SecretStr | None = None
    # Outcome counters by tenant as well, in /metrics (prefsync_tenant_outcomes_total): one
    # series per tenant and outcome, so for a few tenants only. Set it for the workers
    # (they record) and the ingress (it shows).
    metrics_tenant_label: bool = False
    # Remote control commands other than inspection (cancel_consumer, shutdown,
    # pool_restart, revoke, rate_limit…) obeyed: anyone who may publish on the broker,
    # Flower's Redis user included, could send them (worker.queue.control).
    worker_remote_control: bool = False
    # Contacts per Brevo POST /v3/contacts/batch call (contacts named by an email address).
    # Brevo documents no maximum; 100 is the most events a delivery message carries, so a
    # message's contacts go in one call.
    brevo_batch_size: int = Field(100, ge=1, le=1000)

    _split_lists = field_validator(
        "allow_hosts",
        "retry_countdowns",
        "ingress_allow_from",
        "ingress_trusted_proxies",
        mode="before",
    )(_split_commas)

    @field_validator("ingress_allow_from", "ingress_trusted_proxies")
    @classmethod
    def _networks(cls, cidrs: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR block") from None
        return cidrs

    @field_validator("user_hash_key", mode="before")
    @classmethod
    def _empty_is_unset(cls, key: object) -> object:
        # Compose passes an unset variable as "" (docker-compose.yml).
        return None if isinstance(key, str) and not key.strip() else key

    @field_validator("allow_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit():
                raise ValueError(f"allow_hosts entry {host!r} is not host:port")
        return tuple(h.lower() for h in hosts)

    @field_validator("secret_keys")
    @classmethod
    def _fernet_keys(cls, keys: SecretStr | None) -> SecretStr | None:
        from cryptography.fernet import Fernet

        for key in (keys.get_secret_value() if keys else "").split(","):
            if key.strip():
                try:
                    Fernet(key.strip().encode())
                except ValueError:
                    # The message never shows the key: it is a secret, even when wrong.
                    raise ValueError(
                        "each key must be 32 url-safe base64-encoded bytes "
                        "(make one with `prefsync connectors new-key`)"
                    ) from None
        return keys

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        # Refused here, by name, rather than by Celery's usage text about its -l option.
        if level.strip().upper() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}, not {level.strip()!r}")
        return level.strip().upper()

    @field_validator("redis_url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        # A typo such as redis:/host would otherwise end in a traceback of redis-py's. Only
        # the scheme is quoted: the rest may hold a password.
        for part in url.strip().split(";"):
            if not part.startswith(REDIS_SCHEMES):
                scheme = re.match(r"[^/@:]{0,12}:?/*", part)[0]  # type: ignore[index]
                raise ValueError(
                    f"must start with {', '.join(REDIS_SCHEMES)} (it starts {scheme!r}), "
                    "for example redis://localhost:6379/0"
                )
        return url.strip()

    @field_validator("retry_countdowns")
    @classmethod
    def _positive_countdowns(cls, countdowns: tuple[float, ...]) -> tuple[float, ...]:
        if not countdowns or any(c <= 0 for c in countdowns):
            raise ValueError("retry_countdowns must be one or more positive numbers of seconds")
        return countdowns

    @model_validator(mode="after")
    def _visibility_outlasts_retries(self) -> Settings:
        # A retry waits in a worker, unacknowledged, until its countdown ends. If the broker's
        # visibility timeout ran out first, Redis would hand the message to another worker
        # and the attempt would run twice. Refuse to start rather than duplicate.
        # A retry aimed at its offset from the first attempt can wait its own step plus the
        # jitter taken off the step before it.
        longest_countdown = max(self.retry_countdowns) * (1 + self.retry_jitter)
        longest = max(longest_countdown, self.rate_limit_max_wait) + self.task_time_limit
        if self.visibility_timeout <= longest:
            raise ValueError(
                f"visibility_timeout ({self.visibility_timeout}s) must exceed the largest retry "
                f"countdown or rate-limit wait plus task_time_limit ({longest:g}s)"
            )
        return self

    @model_validator(mode="after")
    def _soft_limit_fits_a_call(self) -> Settings:
        # A task makes an HTTP call, then may wait for Redis to settle it (worker.queue.patience);
        # both must end before the soft time limit, or every slow answer or Redis blip
        # would end in the time limits instead of a retry.
        soft = self.soft_time_limit
        if soft - self.http_timeout < MIN_REDIS_WAIT:
            needed = self.http_timeout + MIN_REDIS_WAIT + SOFT_LIMIT_LEAD
            raise ValueError(
                f"PREFSYNC_HTTP_TIMEOUT ({self.http_timeout:g}s) does not fit in the soft time "
                f"limit ({soft:g}s: PREFSYNC_TASK_TIME_LIMIT {self.task_time_limit}s minus "
                f"{SOFT_LIMIT_LEAD}s) with {MIN_REDIS_WAIT:g}s left to wait for Redis: lower "
                f"PREFSYNC_HTTP_TIMEOUT or raise PREFSYNC_TASK_TIME_LIMIT to at least "
                f"{math.ceil(needed)}"
            )
        return self

    @property
    def soft_time_limit(self) -> int:
        """When a task is told to stop (SoftTimeLimitExceeded), SOFT_LIMIT_LEAD seconds
        before it is killed: it then writes its retry."""
        return max(1, self.task_time_limit - SOFT_LIMIT_LEAD)

    @property
    def uses_tls(self) -> bool:
        return self.redis_tls or self.redis_url.startswith("rediss://")

    def tls_options(self) -> dict[str, Any]:
        """redis-py's TLS options (also kombu's ``broker_use_ssl``); empty without TLS."""
        if not self.uses_tls:
            return {}
        import ssl

        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
        if self.redis_tls_ca_file:
            options["ssl_ca_certs"] = self.redis_tls_ca_file
        return options

    @property
    def lock_ttl(self) -> float:
        """How long a (connector, user) lock may live: longer than a task may run (its hard
        time limit), so a lock only ever expires once its holder is gone."""
        return self.task_time_limit + 5


class InvalidSettings(PrefsyncError):
    """A PREFSYNC_* variable is refused; the message names it (never its value, which may
    hold a password)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        raise InvalidSettings("; ".join(describe(exc, _variable, _message))) from None
    except SettingsError as exc:  # a JSON setting that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"PREFSYNC_{field[1].upper()}" if field else "a PREFSYNC_* variable"
        raise InvalidSettings(f"{name}: not valid JSON") from None
    for warning in unknown_variables(os.environ):
        # Standard logging: before logging is configured it still goes to stderr.
        logging.getLogger("prefsync.settings").warning(warning)
    return settings


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One line per PREFSYNC_* variable that is no setting (a misspelt one is otherwise
    silently ignored), naming the nearest setting."""
    known = [f"PREFSYNC_{name.upper()}" for name in Settings.model_fields]
    lines = []
    for name in sorted(environ):
        if not name.startswith("PREFSYNC_") or name in known or name in NOT_SETTINGS:
            continue
        nearest = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f"did you mean {nearest[0]}?" if nearest else "see docs/operations.md"
        lines.append(f"{name} is not a prefsync setting and is ignored: {hint}")
    return lines


# A setting named in a message is named as the user sets it.
_ENV_NAMES = re.compile(
    r"\b(" + "|".join(sorted(Settings.model_fields, key=len, reverse=True)) + r")\b"
)


def _variable(loc: Location) -> str:
    # A rule across several settings has no location: its message names them.
    return f"PREFSYNC_{str(loc[0]).upper()}" if loc else "settings"


def _message(error: ErrorDetails) -> str:
    """A pydantic error's message, naming settings by their variables, never quoting the
    value (it may hold a password)."""
    return _ENV_NAMES.sub(
        lambda found: f"PREFSYNC_{found[0].upper()}", error["msg"].removeprefix("Value error, ")
    )
