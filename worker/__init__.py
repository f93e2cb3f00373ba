"""prefsync: carries consent and preference changes to the tools that email people.

``celery -A worker worker`` finds the Celery app here.
"""

from worker.app import app

__all__ = ["app"]
