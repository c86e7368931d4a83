"""Load the model once per pool process, after fork: nothing touches CUDA in the Celery parent."""

from __future__ import annotations

import gc
from typing import Any

import redis
from celery.signals import worker_process_init, worker_ready

from worker.runtime import get_runtime

__all__: list[str] = []


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    """In the worker's main process: watch for running jobs whose worker died."""
    from producer.store import JobStore
    from worker.app import app, settings
    from worker.reaper import start_reaper

    start_reaper(app, settings, JobStore(redis.Redis.from_url(settings.redis_url), settings.finished_job_ttl_s))


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    from worker.app import settings

    get_runtime(settings)
    # torch + transformers leave millions of long-lived objects; keep the collector from re-scanning them per job.
    gc.freeze()
