"""Everything Celery: the app and its reliability settings, the lanes (which queue a
message takes), the tasks, the pool and reconnect patches, liveness."""
