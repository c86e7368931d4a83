"""What one worker process holds for its lifetime: settings, the job store, the object store and the model."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from producer.books.client import BookClient
from producer.client import NarrationClient
from producer.settings import Settings
from producer.storage import Storage, open_storage
from producer.store import JobStore
from worker.models import CSMModelError, SpeechModel, create_csm_model

__all__ = ["Runtime", "WorkerProcess"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    jobs: JobStore  # job records in Redis
    objects: Storage  # chunks, narrations, captions, manifests
    model: SpeechModel | None
    model_error: str | None = None  # why there is no model

    @cached_property
    def books(self) -> BookClient:
        """Books' bookkeeping when a job narrates part of one (enqueues chapters, sends the assembly)."""
        return BookClient(NarrationClient(self.settings))

    def model_info(self) -> dict[str, Any]:
        """What a job record says about the model that runs it (read live: e.g. a graph capture that failed)."""
        return self.model.describe() if self.model is not None else {}


class WorkerProcess:
    """Builds this process's Runtime on first use, after fork (a forked child never inherits its parent's); thread
    safe. `job_slots` > 1 (threads pool) makes the jobs share one model through a BatchingModel."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.job_slots = 1
        self._runtime: Runtime | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()

    def share_model_between(self, job_slots: int) -> None:
        """Called before the model loads when this process runs `job_slots` jobs at once (threads pool)."""
        self.job_slots = job_slots

    def runtime(self) -> Runtime:
        with self._lock:
            if self._runtime is None or self._pid != os.getpid():
                self._runtime = self._build()
                self._pid = os.getpid()
            return self._runtime

    def _build(self) -> Runtime:
        settings = self.settings
        model: SpeechModel | None = None
        error: str | None = None
        try:
            model = create_csm_model(settings=settings)
            log.info("model ready: %s", model.describe())
        except CSMModelError as e:
            error = str(e)
            log.error("no model in this process, jobs will fail: %s", error)
        if model is not None and model.kind == "csm" and self.job_slots > 1:
            from worker.batcher import BatchingModel

            model = BatchingModel(model, settings.batch_wait_ms / 1000, settings.continuous_batching)
            log.info("%d jobs at a time share the model, up to %d texts per batch", self.job_slots, model.batch_size)
        return Runtime(settings, JobStore.from_settings(settings), open_storage(settings), model, error)
