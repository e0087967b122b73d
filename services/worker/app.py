"""The worker's entry point: `celery -A services.worker.app worker --pool=solo -Q maskfleet`.

Settings are read here, once, from MASKFLEET_* variables (see `settings.py`).
"""

from __future__ import annotations

from services.worker.settings import WorkerSettings
from services.worker.worker import create_worker_app

app = create_worker_app(WorkerSettings())
