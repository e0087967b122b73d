"""Batch jobs as plain functions over Redis and storage, called by Celery tasks and the API.

Nothing here imports Celery, so tests drive submission, chunks and cancellation directly.
"""
