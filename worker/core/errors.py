"""Errors, named by what the caller should do about them."""

from __future__ import annotations


class PrefsyncError(Exception):
    """Base of every error a user or a destination can cause (a traceback is for bugs)."""


class InvalidEvent(PrefsyncError):
    """The payload is not a usable preference event: refuse it, never retry it."""


class EventTooLarge(InvalidEvent):
    """The payload is over PREFSYNC_MAX_EVENT_BYTES: refuse it (the ingress answers 413)."""


class InvalidConfig(PrefsyncError):
    """A connector config is refused; the message names the field.

    Read back from the store, it stops every delivery to that connector (each event is
    dead-lettered, none is sent) until a person stores a corrected config.
    """

    operator_action = True


class Deferred(PrefsyncError):
    """Not now: run the delivery again in ``wait`` seconds (a destination's rate limit, a
    user another delivery holds). Not a failure: it uses none of the retry schedule."""

    def __init__(self, message: str, *, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class DeliveryError(PrefsyncError):
    """A destination did not take the change.

    ``status`` is the HTTP status when there was an answer, ``None`` for a network error.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class RetryableError(DeliveryError):
    """Transient (network, timeout, 425, 429, 5xx): try again on the retry schedule.

    ``retry_after`` is the earliest the destination asked us to come back, in seconds.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class PermanentError(DeliveryError):
    """The destination refused the change for good: dead-letter it now, do not retry.

    ``operator_action`` is set when a person must act (bad credentials, no credit,
    missing permission) so the log line cannot be missed.
    """

    def __init__(
        self, message: str, *, status: int | None = None, operator_action: bool = False
    ) -> None:
        super().__init__(message, status=status)
        self.operator_action = operator_action
