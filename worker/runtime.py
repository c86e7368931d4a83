"""What one worker process holds for its lifetime: settings, store, storage and the model, built after fork."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from producer.settings import Settings
from producer.storage import LocalStorage, S3Storage, open_storage
from producer.store import JobStore, connect_redis
from worker.models import CSMModelError, SpeechModel, create_csm_model

__all__ = ["Runtime", "get_runtime", "load_model", "share_model_between"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: JobStore
    storage: LocalStorage | S3Storage
    model: SpeechModel | None
    model_info: dict[str, Any] = field(default_factory=dict)
    model_error: str | None = None


def load_model(settings: Settings) -> tuple[SpeechModel, dict[str, Any]]:
    """The model this process serves with, and what job records say about it."""
    model = create_csm_model(settings=settings)
    return model, model.describe()


_runtime: Runtime | None = None
_runtime_pid: int | None = None
_runtime_lock = threading.Lock()
_job_slots = 1  # jobs this process runs at once: the threads pool's concurrency, else 1


def share_model_between(job_slots: int) -> None:
    """Called before the model loads when this process runs `job_slots` jobs at once (threads pool): they then share
    one model through a BatchingModel, which decodes their chunks in common batches."""
    global _job_slots
    _job_slots = job_slots


def get_runtime(settings: Settings | None = None) -> Runtime:
    """This process's Runtime, built on first use (never inherited across a fork); thread-safe."""
    global _runtime, _runtime_pid
    with _runtime_lock:
        if _runtime is None or _runtime_pid != os.getpid():
            _runtime = _build_runtime(settings or Settings())
            _runtime_pid = os.getpid()
        return _runtime


def _build_runtime(settings: Settings) -> Runtime:
    store = JobStore(connect_redis(settings.redis_url, settings.redis_retry_s), settings.finished_job_ttl_s)
    model: SpeechModel | None = None
    info: dict[str, Any] = {}
    error: str | None = None
    try:
        model, info = load_model(settings)
        log.info("model ready: %s", info)
    except CSMModelError as e:
        error = str(e)
        log.error("no model in this process, jobs will fail: %s", error)
    if model is not None and model.kind == "csm" and _job_slots > 1:
        from worker.batcher import BatchingModel

        model = BatchingModel(model, settings.batch_wait_ms / 1000)
        log.info("%d jobs at a time share the model, up to %d texts per batch", _job_slots, model.batch_size)
    return Runtime(settings, store, open_storage(settings), model, info, error)
