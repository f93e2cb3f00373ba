"""Runtime settings, read once from the environment (prefix ``PREFSYNC_``)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_RETRY_COUNTDOWNS = (10.0, 30.0, 60.0, 90.0, 110.0)
# The soft time limit comes this long before the hard one: time to write the retry.
SOFT_LIMIT_LEAD = 5
# The least time a task must have left, after one HTTP call, to wait for Redis before its
# soft time limit; with less, a Redis blip would always end in the time limits.
MIN_REDIS_WAIT = 0.5


class InvalidSettings(Exception):
    """The PREFSYNC_* environment cannot run prefsync: fix the setting it names."""


def _split_commas(value: object) -> object:
    # Lists are comma-separated in the environment; pydantic-settings would expect JSON.
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREFSYNC_", extra="ignore")

    redis_url: str = "redis://localhost:6379/0"
    redis_sentinel_master: str = "mymaster"  # with a sentinel:// URL only
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
    audit_maxlen: int = Field(1_000_000, gt=0)
    # Liveness (worker.liveness): the file the worker's heartbeat is written to (one per
    # worker on a host), and how long its main process may stop consuming before it exits
    # and `prefsync worker-health` fails. It must outlast a warm shutdown: the hard time
    # limit plus 10 s.
    heartbeat_file: str = "/tmp/prefsync-worker.heartbeat"
    liveness_timeout: float = Field(120.0, gt=0)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    _split_lists = field_validator("allow_hosts", "retry_countdowns", mode="before")(_split_commas)

    @field_validator("allow_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        for host in hosts:
            name, sep, port = host.rpartition(":")
            if not sep or not name or not port.isdigit():
                raise ValueError(f"allow_hosts entry {host!r} is not host:port")
        return tuple(h.lower() for h in hosts)

    @field_validator("retry_countdowns")
    @classmethod
    def _positive_countdowns(cls, countdowns: tuple[float, ...]) -> tuple[float, ...]:
        if not countdowns or any(c <= 0 for c in countdowns):
            raise ValueError("retry_countdowns must be one or more positive numbers of seconds")
        return countdowns

    @field_validator("rate_limits")
    @classmethod
    def _known_connectors(cls, limits: dict[str, float]) -> dict[str, float]:
        from worker.connectors import get_connector  # connectors read settings when used

        resolved: dict[str, float] = {}
        for name, rate in limits.items():
            connector = get_connector(name)
            if connector is None:
                raise ValueError(f"rate_limits names {name!r}, which is not a connector type")
            resolved[connector.type_id] = rate
        return resolved

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
        # A task makes an HTTP call, then may wait for Redis to settle it (tasks.patiently);
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
    def lock_ttl(self) -> float:
        """How long a (connector, user) lock may live: longer than a task may run (its hard
        time limit), so a lock only ever expires once its holder is gone."""
        return self.task_time_limit + 5


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise InvalidSettings("; ".join(_describe(error) for error in exc.errors())) from None


def _describe(error: Any) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:  # a rule across settings names its settings itself
        return message
    name = "PREFSYNC_" + str(error["loc"][0]).upper()
    return f"{name}: {message}"
