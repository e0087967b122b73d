"""The batch-job domain, one owner for the API and the worker.

Records (`records`), settings and limits (`settings`), input resolution (`inputs`), manifests
(`manifest`), the Redis store (`store`), submission/status/cancel (`service`) and running a
chunk (`chunk`) are plain functions and classes over Redis and storage; only `broker` (the
Celery configuration both sides share) imports Celery, so tests drive submission, chunks and
cancellation directly. The jobs CLI (`cli`) talks to the API over HTTP.
"""
