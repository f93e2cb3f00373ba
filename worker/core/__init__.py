"""The domain, with no I/O: events and their properties, outcomes, errors, the retry
schedule, payload reading, credential masking. Importable without Redis or Celery."""
