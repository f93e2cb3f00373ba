"""Redis faults in a row under continuous load (tests/e2e/soak.py): no hang, nothing lost.

`make test` runs a short soak: 5 faults of 1 to 3 s with the short limits that found the
worker's crash. `make chaos` runs 50 faults of 1 to 10 s (PREFSYNC_SOAK_FAULTS), with the
short limits and with production's defaults, and prints the figures ("[soak]" lines).
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.soak import soak

CHAOS = os.environ.get("PREFSYNC_CHAOS") == "1"
FAULTS = int(os.environ.get("PREFSYNC_SOAK_FAULTS", "50" if CHAOS else "5"))
DOWN = (1.0, 10.0) if CHAOS else (1.0, 3.0)


@pytest.mark.parametrize("profile", ["short", "defaults"] if CHAOS else ["short"])
def test_redis_faults_in_a_row_under_load_hang_nothing_and_lose_nothing(profile, tmp_path):
    result = soak(tmp_path, FAULTS, profile, DOWN, log=lambda line: print(f"[soak] {line}"))
    print(f"[soak] {result.summary()}")
    for reason in result.exit_reasons:
        print(f"[soak] worker exit:\n{reason}")
    assert result.hangs == 0, "\n\n".join(result.hang_dumps)
    assert result.lost == 0, result.summary()
    assert len(result.faults) == FAULTS
