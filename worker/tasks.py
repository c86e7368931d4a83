"""The narration task: decode the message, run the job, and record any failure under its error code."""

from __future__ import annotations

import logging

from celery import Task

from producer import keys
from producer.celery_config import send_job
from producer.errors import EchoForgeError, ErrorCode, JobBusyError, JobNotFoundError, time_limit_hit
from producer.request import DEFAULT_PRIORITY
from producer.states import JobState
from producer.store import JobStore, is_job_id
from worker.app import app, metrics, process, settings
from worker.job_runner import run_job

__all__ = ["narration_task"]

log = logging.getLogger(__name__)


def error_code(error: BaseException) -> ErrorCode:
    """The job error code of what ended a run: our exceptions carry theirs; Celery's soft limit is a timeout, even
    when it interrupted a call that wrapped it."""
    if time_limit_hit(error):
        return ErrorCode.TIMEOUT
    return error.code if isinstance(error, EchoForgeError) else ErrorCode.INTERNAL_ERROR


@app.task(name=keys.NARRATE_TASK, bind=True)
def narration_task(self: Task, job_id: str) -> None:
    if not is_job_id(job_id):
        log.error("rejected a narration message whose job id is not a job id: %.64r", job_id)
        return
    try:
        rt = process.runtime()
    except Exception as e:  # the job must not stay queued because this worker is broken
        log.exception("job %s: this worker cannot run jobs", job_id)
        store = JobStore.from_settings(settings)
        store.fail(job_id, ErrorCode.WORKER_MISCONFIGURED, _message(e))
        store.close()
        return
    try:
        if run_job(job_id, rt, worker=self.request.hostname or "unknown", metrics=metrics) is JobState.QUEUED:
            _send_again(job_id, rt.jobs)
    except JobNotFoundError:
        log.error("job %s: no record (expired or never created); message dropped", job_id)
    except JobBusyError:
        log.info("job %s: busy under another delivery; retry in %.0f s", job_id, settings.job_lock_ttl_s)
        raise self.retry(countdown=settings.job_lock_ttl_s, max_retries=None) from None
    except Exception as e:
        code = error_code(e)
        if code is ErrorCode.INTERNAL_ERROR:
            log.exception("job %s: failed unexpectedly", job_id)
        else:
            log.error("job %s: failed (%s): %s", job_id, code.value, e)
        rt.jobs.fail(job_id, code, _message(e))


def _send_again(job_id: str, store: JobStore) -> None:
    """A job handed back by this draining worker: its message goes out at once, so another worker resumes it now
    (until `mark_sent`, a reaper would send it)."""
    send_job(app, job_id, settings.queue, store.get(job_id).request.get("priority", DEFAULT_PRIORITY))
    store.mark_sent(job_id)


def _message(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:500]
