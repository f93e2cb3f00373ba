"""Deciding and making the calls: the per-process runtime, the pipeline steps the tasks
run (route, deliver, dead-letter), the deliverer, pacing, and the dry-run preview. No
Celery here."""
