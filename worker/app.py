"""The Celery app, built from Settings: `celery -A worker.app worker` and `celery -A worker.app flower`."""

from __future__ import annotations

from celery import Celery

from producer.celery_config import celery_config
from producer.settings import Settings

__all__ = ["app", "settings"]

settings = Settings()
app = Celery("echoforge", include=["worker.tasks"], set_as_current=True)
app.conf.update(celery_config(settings))

import worker.signals  # noqa: E402,F401  (connects the per-process model loading)
