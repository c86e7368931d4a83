"""The narration task: decode the payload, run the pipeline, map failures to a job error code."""

from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from producer import keys
from producer.errors import InvalidRequestError, JobNotFoundError, StorageError, StorageUnavailableError
from producer.store import JobStore, connect_redis, is_job_id
from worker import pipeline
from worker.app import app, settings
from worker.lock import JobBusyError
from worker.models import CSMModelError, CSMModelLoadError, CSMModelNotFoundError
from worker.runtime import get_runtime

__all__ = ["narrate"]

log = logging.getLogger(__name__)

# (exception type, job error code), most specific first.
ERROR_CODES: list[tuple[type[BaseException], str]] = [
    (SoftTimeLimitExceeded, "timeout"),
    (InvalidRequestError, "invalid_request"),
    (CSMModelNotFoundError, "model_unavailable"),
    (CSMModelLoadError, "model_unavailable"),
    (CSMModelError, "synthesis_failed"),
    (StorageUnavailableError, "storage_unavailable"),
    (StorageError, "storage_error"),
]


@app.task(name=keys.NARRATE_TASK, bind=True)
def narrate(self: Task, job_id: str) -> None:
    if not is_job_id(job_id):
        log.error("rejected a narration message whose job id is not a job id: %.64r", job_id)
        return
    try:
        rt = get_runtime(settings)
    except Exception as e:  # the job must not stay queued because this worker is broken
        log.exception("job %s: this worker cannot run jobs", job_id)
        store = JobStore(connect_redis(settings.redis_url, settings.redis_retry_s))
        store.fail(job_id, "worker_misconfigured", _message(e))
        return
    try:
        pipeline.run(job_id, rt, worker=self.request.hostname or "unknown")
    except JobNotFoundError:
        log.error("job %s: no record (expired or never created); message dropped", job_id)
    except JobBusyError:
        log.info("job %s: busy under another delivery; retry in %.0f s", job_id, settings.job_lock_ttl_s)
        raise self.retry(countdown=settings.job_lock_ttl_s, max_retries=None) from None
    except Exception as e:
        code = next((c for t, c in ERROR_CODES if isinstance(e, t)), "internal_error")
        if code == "internal_error":
            log.exception("job %s: failed unexpectedly", job_id)
        else:
            log.error("job %s: failed (%s): %s", job_id, code, e)
        rt.store.fail(job_id, code, _message(e))


def _message(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:500]
