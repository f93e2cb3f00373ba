"""What prefsync keeps in Redis, one store a module: connector configs, each person's
record, erasures, dead letters, the audit trail, outcomes and metrics, the outbox, the
bulk feeder. No Celery here."""
