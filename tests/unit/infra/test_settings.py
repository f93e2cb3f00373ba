"""Settings (worker.infra.settings) that contradict each other are refused, naming them."""

from __future__ import annotations

import pytest

from worker.infra.settings import Settings, unknown_variables


def test_an_http_timeout_the_soft_time_limit_cannot_fit_is_refused_naming_both():
    with pytest.raises(ValueError) as refused:
        Settings(http_timeout=5, task_time_limit=6, visibility_timeout=400)
    message = str(refused.value)
    assert "PREFSYNC_HTTP_TIMEOUT (5s)" in message
    assert "soft time limit (1s: PREFSYNC_TASK_TIME_LIMIT 6s minus 5s)" in message
    assert "at least 11" in message


@pytest.mark.parametrize(
    ("http_timeout", "task_time_limit", "fits"),
    [(10, 60, True), (0.5, 6, True), (0.6, 6, False), (2, 8, True), (2.6, 8, False)],
)
def test_the_soft_time_limit_must_leave_half_a_second_after_one_http_call(
    http_timeout, task_time_limit, fits
):
    def make() -> Settings:
        return Settings(
            http_timeout=http_timeout, task_time_limit=task_time_limit, visibility_timeout=400
        )

    if fits:
        assert make().soft_time_limit == max(1, task_time_limit - 5)
    else:
        with pytest.raises(ValueError, match="does not fit in the soft time limit"):
            make()


@pytest.mark.parametrize("url", ["redis:/localhost", "http://localhost:6379", "localhost:6379"])
def test_a_redis_url_without_a_known_scheme_is_refused(url: str) -> None:
    with pytest.raises(
        ValueError, match=r"must start with redis://, rediss://, unix://, sentinel://"
    ):
        Settings(redis_url=url)


@pytest.mark.parametrize(
    "url",
    ["redis://h:1/0", "rediss://:pw@h:1/0", "unix:///tmp/r.sock", "sentinel://a:1;sentinel://b:2"],
)
def test_every_redis_url_form_is_accepted(url: str) -> None:
    assert Settings(redis_url=url).redis_url == url


def test_a_log_level_is_one_celery_and_python_know_in_any_case() -> None:
    assert Settings(log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValueError, match="must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        Settings(log_level="verbose")


def test_unknown_prefsync_variables_are_named_with_the_nearest_setting() -> None:
    environ = {
        "PREFSYNC_AUDIT_MAXLN": "5",
        "PREFSYNC_REDIS_URL": "redis://h:1/0",
        "PREFSYNC_FROBNICATE": "1",
        "PREFSYNC_CHAOS": "1",  # the test suite's own
        "HOME": "/root",
    }

    assert unknown_variables(environ) == [
        "PREFSYNC_AUDIT_MAXLN is not a prefsync setting and is ignored: did you mean "
        "PREFSYNC_AUDIT_MAXLEN?",
        "PREFSYNC_FROBNICATE is not a prefsync setting and is ignored: see docs/operations.md",
    ]
