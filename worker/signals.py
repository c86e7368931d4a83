"""Celery's lifecycle, wired to a worker's parts: the model loads once per pool process after fork (nothing touches
CUDA in the Celery parent), the reaper runs in the main process, metrics follow every job."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from celery import Celery, Task
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
from producer.settings import Settings
from producer.store import JobStore
from worker.metrics import WorkerMetrics
from worker.reaper import start_reaper
from worker.runtime import WorkerProcess

__all__ = ["WorkerSignals"]

log = logging.getLogger(__name__)


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


class WorkerSignals:
    """The handlers of one worker app; `connect()` registers them with Celery."""

    def __init__(self, app: Celery, settings: Settings, process: WorkerProcess, metrics: WorkerMetrics) -> None:
        self.app, self.settings, self.process, self.metrics = app, settings, process, metrics

    def connect(self) -> None:
        for signal, handler in (
            (worker_init, self.worker_init), (worker_ready, self.worker_ready),
            (worker_shutdown, self.worker_shutdown), (worker_process_init, self.pool_process_init),
            (worker_process_shutdown, self.pool_process_shutdown), (task_prerun, self.task_prerun),
            (task_postrun, self.task_postrun), (task_retry, self.task_retry), (task_failure, self.task_failure),
        ):
            signal.connect(handler, weak=False)

    def worker_init(self, sender: Any = None, **_: Any) -> None:
        """In the main process, before the pool forks: metrics; under the threads pool the jobs share one model."""
        self.metrics.start_server(getattr(sender, "hostname", None) or "worker")
        if _threads_pool(sender):
            self.process.share_model_between(_concurrency(sender))

    def worker_ready(self, sender: Any = None, **_: Any) -> None:
        """In the main process: the reaper; under the threads pool, the model (loaded in the background: tasks that
        arrive meanwhile wait for it)."""
        start_reaper(self.app, self.settings, JobStore.from_settings(self.settings))
        if _threads_pool(getattr(sender, "controller", sender)):
            threading.Thread(target=self._load_model_logged, name="echoforge-model-load", daemon=True).start()

    def worker_shutdown(self, **_: Any) -> None:
        self.metrics.stop_server()

    def pool_process_init(self, **_: Any) -> None:
        self._load_model()

    def pool_process_shutdown(self, **_: Any) -> None:
        self.metrics.process_exiting()

    def _load_model(self) -> None:
        self.metrics.model_ready(self.process.runtime().model_info())
        # torch + transformers leave millions of long-lived objects; keep the collector from re-scanning them per job.
        gc.freeze()

    def _load_model_logged(self) -> None:
        try:
            self._load_model()
        except Exception:  # the first job builds the runtime again and fails with the reason
            log.exception("loading the model failed")

    def _narration_job(self, sender: Task | None, args: Any) -> str | None:
        """The job id of a narration task, when metrics are on."""
        if self.metrics.enabled and sender is not None and sender.name == keys.NARRATE_TASK and args:
            return args[0] if isinstance(args[0], str) else None
        return None

    def task_prerun(self, sender: Task | None = None, args: Any = None, **_: Any) -> None:
        if job_id := self._narration_job(sender, args):
            self.metrics.job_starting(job_id, self.process.runtime().jobs)

    def task_postrun(self, sender: Task | None = None, args: Any = None, **_: Any) -> None:
        if job_id := self._narration_job(sender, args):
            self.metrics.job_finished(job_id, self.process.runtime().jobs)

    def task_retry(self, **_: Any) -> None:
        self.metrics.retried()

    def task_failure(self, **_: Any) -> None:
        self.metrics.task_failed()
