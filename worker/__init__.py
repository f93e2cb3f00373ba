"""prefsync: carries consent and preference changes to the tools that email people.

``celery -A worker worker`` finds the Celery app here.
"""

import sys

from worker.settings import InvalidSettings

try:
    from worker.app import app
except InvalidSettings as exc:
    # Every entry point (prefsync, celery -A worker) imports this first: a refused
    # PREFSYNC_* variable is one line naming it, not a traceback. Exit 2: could not run.
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

__all__ = ["app"]
