"""The Celery app, built from Settings: `celery -A worker.app worker` and `celery -A worker.app flower`."""

from __future__ import annotations

import logging

from celery import Celery

from producer.celery_config import celery_config
from producer.settings import Settings

__all__ = ["app", "settings"]

settings = Settings()
app = Celery("echoforge", include=["worker.tasks"], set_as_current=True)
app.conf.update(celery_config(settings))

if settings.broker_visibility_timeout_s <= settings.job_time_limit_s:
    logging.getLogger(__name__).warning(
        "ECHOFORGE_VISIBILITY_TIMEOUT_S (%d) is not above the job time limit (%d): Redis will redeliver jobs that "
        "are still running; the per-job lock makes such deliveries wait", settings.broker_visibility_timeout_s,
        settings.job_time_limit_s)

import worker.signals  # noqa: E402,F401  (connects the per-process model loading)
