"""Settings (worker.infra.settings) that contradict each other are refused, naming them."""

from __future__ import annotations

import pytest

from worker.infra.settings import Settings


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
