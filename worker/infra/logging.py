"""Logging: structlog JSON lines (or a console renderer on a terminal), the same pipeline
for Celery's own loggers, and redaction of anything that looks like a credential."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, MutableMapping
from typing import Any, Protocol

import structlog

from worker.infra.settings import Settings

# Credentials as they can appear in text: Brevo keys, bearer tokens, header and JSON forms.
_SECRET_PATTERNS = [
    re.compile(r"xkeysib-[A-Za-z0-9-]+"),
    re.compile(r"(?i)(bearer\s+)[^\s'\",}]+"),
    re.compile(
        r"(?i)((?:api[-_]?key|private_api_key|authorization)['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"
    ),
]
_SECRET_KEYS = frozenset({"api_key", "private_api_key", "api-key", "authorization", "password"})


# Each pattern needs one of these (in lower case): most text has none, and a substring test
# costs far less than three regular expressions on every field of every log line.
_SECRET_HINTS = ("xkeysib-", "bearer", "key", "authorization")


def redact(text: str) -> str:
    lowered = text.lower()
    if not any(hint in lowered for hint in _SECRET_HINTS):
        return text
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "[REDACTED]", text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {
            k: "[REDACTED]" if str(k).lower() in _SECRET_KEYS else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_processor(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return _redact_value(dict(event))


class _Hasher(Protocol):
    def user(self, user_id: str) -> str: ...
    def of(self, *parts: str) -> str: ...


# Gives the keyed hash of people's ids (worker.infra.pseudonym): handed over by the runtime
# (worker.delivery.runtime), asked at the first line that names someone. Without it, or while its
# key cannot be read, a user id is left out of a line, never shown.
_pseudonyms: Callable[[], _Hasher] | None = None


def hide_users_with(pseudonyms: Callable[[], _Hasher]) -> None:
    global _pseudonyms
    _pseudonyms = pseudonyms


def _hasher() -> _Hasher | None:
    try:
        return _pseudonyms() if _pseudonyms is not None else None
    except Exception:  # the key lives in Redis, which may be away: leave the id out
        return None


def _user_ids(mode: str) -> Any:
    """The processor that applies PREFSYNC_LOG_USER_IDS to the ``user`` of a line (and to
    the key of a user payload's event, which holds the person's id at the PMP): ``hash``
    the keyed hash ``prefsync audit --user`` also shows, ``omit`` left out."""

    def hide(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        keyed = event.get("user") or "event_key" in event or "event_keys" in event
        hasher = _hasher() if mode == "hash" and keyed else None

        def hidden(key: Any) -> Any:
            if not (isinstance(key, str) and key.startswith("user.")):
                return key
            kind = key.partition(":")[0]
            return f"{kind}:{hasher.of('event', key)}" if hasher else kind

        if event.get("user"):
            if hasher is None:
                event.pop("user")
            else:
                event["user"] = hasher.user(str(event["user"]))
        if "event_key" in event:
            event["event_key"] = hidden(event["event_key"])
        if isinstance(event.get("event_keys"), list):  # a destination call's (recorder)
            event["event_keys"] = [hidden(key) for key in event["event_keys"]]
        return event

    return hide


def uses_console(settings: Settings) -> bool:
    """Console lines for a person at a terminal (or when asked); JSON lines otherwise."""
    return settings.log_format == "console" or (
        settings.log_format == "auto" and sys.stderr.isatty()
    )


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Looked up at each line: a test runner swaps sys.stderr.
    return structlog.PrintLogger(sys.stderr)


def warnings_to_stderr() -> None:
    """Before ``configure``, structlog prints to stdout, where a command writes its JSON or
    table: a warning there breaks ``prefsync connectors show … | python3 -m json.tool``.
    Send those lines to stderr instead, as console text."""
    if not structlog.is_configured():
        structlog.configure(
            logger_factory=_stderr_logger,
            processors=[
                structlog.processors.add_log_level,
                structlog.dev.ConsoleRenderer(colors=False),
            ],
        )


def configure(settings: Settings, level: int | str | None = None) -> None:
    """Route structlog and the standard library (Celery, kombu) through one pipeline, at
    ``level`` (default: PREFSYNC_LOG_LEVEL)."""
    console = uses_console(settings)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    renderer = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if settings.log_user_ids == "plain" else [_user_ids(settings.log_user_ids)]),
            redact_processor,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Caller, thread and process of a record are not in our lines; looking them up is a
    # good part of a log call's cost (the logging HOWTO's "Optimization" section).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # Python warnings (Celery's "running as root", deprecations) become log lines too.
    logging.captureWarnings(True)
    root.setLevel(level or settings.log_level.upper())
