"""A pool process's result reaches the main process whole whatever signal comes meanwhile
(worker.queue.pool): a soft time limit or SIGTERM waits until the result is written."""

from __future__ import annotations

import os
import signal
import time

import pytest
from billiard.exceptions import SoftTimeLimitExceeded
from billiard.pool import SIG_SOFT_TIMEOUT

from worker.queue.pool import signals_held, soft_limit_armed


def test_a_soft_time_limit_while_a_result_is_written_or_after_is_dropped_until_the_next_task():
    def soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    def terminate(signum, frame):
        raise SystemExit(-241)

    previous = {
        SIG_SOFT_TIMEOUT: signal.signal(SIG_SOFT_TIMEOUT, soft_limit),
        signal.SIGTERM: signal.signal(signal.SIGTERM, terminate),
    }
    written = []
    try:
        with signals_held():
            os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
            written.append("first half")
            time.sleep(0.05)
            written.append("second half")
        written.append("after")  # the soft time limit was dropped: nothing raised

        with pytest.raises(SystemExit):
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                written.append("whole")
            time.sleep(0.05)  # SIGTERM arrives here, once the message is whole
        os.kill(os.getpid(), SIG_SOFT_TIMEOUT)  # between tasks: ignored
        time.sleep(0.05)
        soft_limit_armed()  # the next task starts: its soft time limit raises again
        with pytest.raises(SoftTimeLimitExceeded):
            os.kill(os.getpid(), SIG_SOFT_TIMEOUT)
            time.sleep(0.05)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    assert written == ["first half", "second half", "after", "whole"]
