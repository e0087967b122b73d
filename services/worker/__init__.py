"""The batch worker: a Celery app whose thin tasks run the plain job logic in `jobs`."""
