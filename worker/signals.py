"""Celery's lifecycle, wired to a worker's parts: the model loads once per pool process after fork (nothing touches
CUDA in the Celery parent), the reaper runs in the main process, metrics follow every job; a warm shutdown drains the
running jobs (they hand themselves back), and a job killed at its hard time limit is recorded as a timeout."""

from __future__ import annotations

import gc
import logging
import threading
from typing import Any

from celery import Celery, Task
from celery.exceptions import TimeLimitExceeded
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
    worker_shutting_down,
)

from producer import keys
from producer.errors import ErrorCode
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
        self._store: JobStore | None = None

    def connect(self) -> None:
        for signal, handler in (
            (worker_init, self.worker_init), (worker_ready, self.worker_ready),
            (worker_shutdown, self.worker_shutdown), (worker_process_init, self.pool_process_init),
            (worker_process_shutdown, self.pool_process_shutdown), (task_prerun, self.task_prerun),
            (task_postrun, self.task_postrun), (task_retry, self.task_retry), (task_failure, self.task_failure),
            (worker_shutting_down, self.worker_shutting_down),
        ):
            signal.connect(handler, weak=False)

    def worker_init(self, sender: Any = None, **_: Any) -> None:
        """In the main process, before the pool forks: metrics; under the threads pool the jobs share one model."""
        hostname = getattr(sender, "hostname", None) or "worker"
        self.metrics.start_server(hostname)
        try:  # a worker of the same name that drained before (a restart) is not this one
            self._main_store().stop_draining(hostname)
        except Exception:
            log.warning("worker %s: could not clear an earlier drain", hostname, exc_info=True)
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

    def worker_shutting_down(self, sender: Any = None, **_: Any) -> None:
        """In the main process, on SIGTERM (warm) or SIGQUIT (cold): the running jobs, which check for it after every
        chunk, store their rows in flight and hand themselves back. Called inside a signal handler: the Redis call
        runs on a thread of its own, which the process waits for before it exits."""
        threading.Thread(target=self._start_draining, args=(str(sender),), name="echoforge-drain").start()

    def _start_draining(self, hostname: str) -> None:
        try:
            self._main_store().start_draining(hostname)
            log.info("worker %s: draining; its running jobs store their rows in flight and go back to the queue",
                     hostname)
        except Exception:  # Redis away: the jobs run on until the stop grace period ends, then the reaper acts
            log.warning("worker %s: could not start draining", hostname, exc_info=True)

    def task_failure(self, sender: Task | None = None, exception: BaseException | None = None, args: Any = None,
                     **_: Any) -> None:
        self.metrics.task_failed()
        if isinstance(exception, TimeLimitExceeded) and sender is not None and sender.name == keys.NARRATE_TASK \
                and args and isinstance(args[0], str):
            # The hard limit killed the pool process (this runs in the main process): the job ends now, instead
            # of being reaped once its lock expires and run again to the redelivery cap.
            limit = self.settings.job_time_limit_s
            message = f"the job ran past its hard time limit of {limit} s"
            if self._main_store().fail(args[0], ErrorCode.TIMEOUT, message):
                log.error("job %s: failed (timeout): its pool process was killed at the hard time limit of %d s",
                          args[0], limit)

    def _main_store(self) -> JobStore:
        """The main process's job store (short timeouts: a shutdown must not hang on Redis)."""
        if self._store is None:
            self._store = JobStore.from_settings(self.settings, retry_s=2, timeout_s=5)
        return self._store
