"""Load the model once per pool process, after fork: nothing touches CUDA in the Celery parent. Metrics hooks."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from celery import Task
from celery.signals import (
    task_failure,
    task_postrun,
    task_prerun,
    task_retry,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from producer import keys
from worker import metrics
from worker.runtime import get_runtime, share_model_between

__all__: list[str] = []

log = logging.getLogger(__name__)


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    """In the worker's main process: watch for running jobs whose worker died."""
    from producer.store import JobStore, connect_redis
    from worker.app import app, settings
    from worker.reaper import start_reaper

    store = JobStore(connect_redis(settings.redis_url, settings.redis_retry_s), settings.finished_job_ttl_s)
    start_reaper(app, settings, store)


def _load_model() -> None:
    from worker.app import settings

    metrics.model_ready(get_runtime(settings).model_info)
    # torch + transformers leave millions of long-lived objects; keep the collector from re-scanning them per job.
    gc.freeze()


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    _load_model()


def _threads_pool(worker: Any) -> bool:
    from celery.concurrency import get_implementation

    pool = getattr(worker, "pool_cls", None)
    pool = get_implementation(pool) if isinstance(pool, str) else pool
    return getattr(pool, "__module__", "") == "celery.concurrency.thread"


def _concurrency(worker: Any) -> int:
    try:
        return max(1, int(worker.concurrency))
    except (AttributeError, TypeError, ValueError):  # "auto" is resolved later; batching then stays off
        return 1


@worker_init.connect
def _start_metrics(sender: Any = None, **_: Any) -> None:
    """In the main process, before the pool forks: the multiprocess metrics directory and /metrics."""
    from worker.app import settings

    metrics.start_server(settings, getattr(sender, "hostname", None) or "worker")


@worker_init.connect
def _share_model_in_threads_pool(sender: Any = None, **_: Any) -> None:
    """Under the threads pool the jobs run in this process and share one model (loaded once the worker is ready)."""
    if _threads_pool(sender):
        share_model_between(_concurrency(sender))


@worker_ready.connect
def _load_model_in_threads_pool(sender: Any = None, **_: Any) -> None:
    """Threads pool: load now, in the background (tasks that arrive meanwhile wait for it in get_runtime)."""
    worker = getattr(sender, "controller", sender)
    if _threads_pool(worker):
        threading.Thread(target=_load_model_logged, name="echoforge-model-load", daemon=True).start()


def _load_model_logged() -> None:
    try:
        _load_model()
    except Exception:  # the first job builds the runtime again and fails with the reason
        log.exception("loading the model failed")


@worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    metrics.stop_server()


@worker_process_shutdown.connect
def _child_exiting(**_: Any) -> None:
    metrics.process_exiting()


def _narration_job(sender: Task | None, args: Any) -> str | None:
    """The job id of a narration task, when metrics are on."""
    if metrics.enabled() and sender is not None and sender.name == keys.NARRATE_TASK and args:
        return args[0] if isinstance(args[0], str) else None
    return None


@task_prerun.connect
def _job_starting(sender: Task | None = None, args: Any = None, **_: Any) -> None:
    if job_id := _narration_job(sender, args):
        metrics.job_starting(job_id, get_runtime().store.redis)


@task_postrun.connect
def _job_finished(sender: Task | None = None, args: Any = None, **_: Any) -> None:
    if job_id := _narration_job(sender, args):
        metrics.job_finished(job_id, get_runtime().store.redis)


@task_retry.connect
def _task_retried(**_: Any) -> None:
    metrics.retried()


@task_failure.connect
def _task_failed(**_: Any) -> None:
    metrics.task_failed()
