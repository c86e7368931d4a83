"""The reaper: re-enqueue running jobs whose worker died (their run lock expired), so nothing stays running forever,
and send queued jobs whose producer died between recording them and sending their message.

Runs as a thread in every worker's main process; a claim key makes several reapers send a job once.
The re-enqueued job resumes from its stored chunks, and the redelivery cap still applies.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery

from producer.celery_config import send_job
from producer.errors import JobNotFoundError
from producer.request import DEFAULT_PRIORITY
from producer.settings import Settings
from producer.states import JobState
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
        send_job(app, job_id, settings.queue)
        sent.append(job_id)
    return sent + send_unsent(store, app, settings)


def send_unsent(store: JobStore, app: Celery, settings: Settings) -> list[str]:
    """Send queued jobs never confirmed as sent. A duplicate (the producer was only slow) is harmless: the run lock
    and the job's state keep a second message from running it again."""
    sent = []
    for job_id in store.unsent(older_than_s=settings.job_lock_ttl_s * 3):
        try:
            job = store.get(job_id)
        except JobNotFoundError:
            job = None
        if job is not None and job.state is JobState.QUEUED and store.claim_reap(job_id, settings.job_lock_ttl_s * 3):
            log.warning("job %s: recorded but never sent (its producer died?); sent now", job_id)
            send_job(app, job_id, settings.queue, job.request.get("priority", DEFAULT_PRIORITY))
            sent.append(job_id)
        store.mark_sent(job_id)
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
