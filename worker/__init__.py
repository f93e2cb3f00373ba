"""prefsync: carries consent and preference changes to the tools that email people.

``celery -A worker worker`` finds the Celery app here, as ``worker.app``. It is built on
first use, not on import: importing ``worker.core.events`` (say) loads no Celery.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "app":
        # worker.queue.app exits with one line (code 2) for a refused PREFSYNC_* setting.
        from worker.queue.app import app

        return app
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
