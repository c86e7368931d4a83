"""Load the model once per pool process, after fork: nothing touches CUDA in the Celery parent."""

from __future__ import annotations

import gc
from typing import Any

from celery.signals import worker_process_init

from worker.runtime import get_runtime

__all__: list[str] = []


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    from worker.app import settings

    get_runtime(settings)
    # torch + transformers leave millions of long-lived objects; keep the collector from re-scanning them per job.
    gc.freeze()
