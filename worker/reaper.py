"""The reaper: re-enqueue running jobs whose worker died (their run lock expired), so nothing stays running forever.

Runs as a thread in every worker's main process; a claim key makes several reapers send a job once.
The re-enqueued job resumes from its stored chunks, and the redelivery cap still applies.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from producer import keys
from producer.settings import Settings
from producer.store import JobStore

__all__ = ["reap_once", "start_reaper"]

log = logging.getLogger(__name__)


def reap_once(store: JobStore, app: Celery, settings: Settings) -> list[str]:
    """One scan; returns the ids re-enqueued."""
    sent = []
    for job_id in store.stale_running(grace_s=settings.job_lock_ttl_s):
        if not store.claim_reap(job_id, hold_s=settings.job_lock_ttl_s * 3):
            continue
        log.warning("job %s: running but its worker is gone (lock expired); re-enqueued", job_id)
        app.send_task(keys.NARRATE_TASK, args=[job_id], task_id=job_id, queue=settings.queue)
        sent.append(job_id)
    return sent


def start_reaper(app: Celery, settings: Settings, store: JobStore) -> threading.Thread:
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.job_lock_ttl_s):
            try:
                reap_once(store, app, settings)
            except Exception:  # Redis away for a moment: the next scan tries again
                log.warning("reaper scan failed", exc_info=True)

    thread = threading.Thread(target=loop, name="echoforge-reaper", daemon=True)
    thread.start()
    return thread
