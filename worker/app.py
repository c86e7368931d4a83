"""The Celery app, built from Settings: `celery -A worker.app worker` and `celery -A worker.app flower`.

The composition root of a worker: the settings, the process's runtime holder and metrics, and the signal handlers
that tie them to Celery's lifecycle.
"""

from __future__ import annotations

import logging

from celery import Celery

from producer.celery_config import celery_config
from producer.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import WorkerProcess
from worker.signals import WorkerSignals

__all__ = ["app", "metrics", "process", "settings"]

settings = Settings()
app = Celery("echoforge", include=["worker.tasks"], set_as_current=True)
app.conf.update(celery_config(settings))
metrics = WorkerMetrics(settings)
process = WorkerProcess(settings)
WorkerSignals(app, settings, process, metrics).connect()

if settings.broker_visibility_timeout_s <= settings.job_time_limit_s:
    logging.getLogger(__name__).warning(
        "ECHOFORGE_VISIBILITY_TIMEOUT_S (%d) is not above the job time limit (%d): Redis will redeliver jobs that "
        "are still running; the per-job lock makes such deliveries wait", settings.broker_visibility_timeout_s,
        settings.job_time_limit_s)
