"""The task harness's fixtures (tests.unit.queue.harness), for every test here."""

from tests.unit.queue.harness import harness, no_sleep, outage, settings

__all__ = ["harness", "no_sleep", "outage", "settings"]
