"""Run one job under its run lock: start it, narrate it with the core, and record how it ended."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from producer.errors import NarrationTimeoutError, time_limit_hit
from producer.job import Job
from producer.request import NarrationRequest
from producer.states import JobState
from worker.lock import JobLock
from worker.metrics import WorkerMetrics
from worker.models import CSMModelLoadError
from worker.narration.frame_publish import FramePublisher
from worker.narration.narrate import NarrationOutcome, ProgressHook, Verdict, narrate
from worker.narration.rerender import rerender
from worker.runtime import Runtime

__all__ = ["run_job"]

log = logging.getLogger(__name__)


def run_job(job_id: str, rt: Runtime, worker: str, metrics: WorkerMetrics) -> JobState | None:
    """Run one job to a terminal state; None when the job was not (or no longer) runnable.

    QUEUED means this worker is draining (a warm shutdown) and handed the job back: the caller sends it again.
    Raises JobBusyError when another delivery is running it.
    """
    with JobLock(rt.jobs, job_id, rt.settings.job_lock_ttl_s) as lock:
        return _run_locked(job_id, rt, worker, metrics, lock)


def _run_locked(job_id: str, rt: Runtime, worker: str, metrics: WorkerMetrics, lock: JobLock) -> JobState | None:
    job = rt.jobs.start(job_id, worker=worker, model=rt.model_info(), phase="planning")
    if job is None:
        log.info("job %s: not started (already %s)", job_id, rt.jobs.get(job_id).state.value)
        return None
    if job.attempts > rt.settings.max_attempts:
        rt.jobs.dead_letter(job_id, f"started {job.attempts} times; each run lost its worker "
                                    f"(limit ECHOFORGE_MAX_ATTEMPTS={rt.settings.max_attempts})")
        log.error("job %s: dead-lettered after %d starts", job_id, job.attempts)
        return JobState.FAILED
    if rt.model is None:
        raise CSMModelLoadError(rt.model_error or "no model loaded in this worker")

    deadline = time.monotonic() + rt.settings.soft_time_limit_s

    def report(progress: dict[str, Any]) -> Verdict:
        if time.monotonic() > deadline:  # Celery's own soft limit does not reach the threads pool
            raise NarrationTimeoutError(f"the job ran past its soft time limit of {rt.settings.soft_time_limit_s} s")
        metrics.observe_progress(job_id, progress)
        current = rt.jobs.progress(job_id, **progress)
        if current is None or current.cancel_requested:
            return "stop" if current is None else "cancel"
        return "drain" if rt.jobs.draining(worker) else "go"

    request = (NarrationRequest.parse({**_options(job.request), "text": "re-render"}) if job.rerender
               else job.narration_request())
    with _time_limited(deadline, rt.settings.soft_time_limit_s):
        outcome = _outcome(job, request, rt, worker, report)
    if outcome.verdict == "stop":
        log.info("job %s: ended elsewhere while running; stopped", job_id)
        return None
    if outcome.verdict == "drain":
        return _hand_back(job_id, rt, worker, lock, outcome.progress or {})
    if outcome.verdict == "cancel":
        rt.jobs.finish_canceled(job_id)
        log.info("job %s: canceled; its chunks were deleted", job_id)
        return JobState.CANCELED
    result, progress = outcome.result or {}, outcome.progress or {}
    if job.book_id:
        rt.books.part_narrated(job, result, rerendered=bool(job.rerender))
    rt.jobs.succeed(job_id, result, job.request if job.rerender else request, rt.model_info(), **progress)
    log.info("job %s: succeeded, %.1f s of audio in %d chunks (%d flagged) at %s", job_id, result["duration_s"],
             result["chunks"], len(result["flagged_chunks"]), result["url"])
    return JobState.SUCCEEDED


def _outcome(job: Job, request: NarrationRequest, rt: Runtime, worker: str, report: ProgressHook
             ) -> NarrationOutcome:
    """The job narrated, or its stored chunks re-rendered."""
    assert rt.model is not None
    if job.rerender:
        log.info("job %s: attempt %d on %s, re-rendering %s", job.id, job.attempts, worker, job.rerender["chunks"])
        with rt.model.serving_job():
            return rerender(job.id, request, job.rerender, rt.model, rt.objects, report)
    log.info("job %s: attempt %d on %s, %d chars", job.id, job.attempts, worker, len(request.text))
    return _narrate(job.id, job.attempts, request, rt, report)


@contextmanager
def _time_limited(deadline: float, limit_s: float) -> Iterator[None]:
    """Whatever ends a run past its soft time limit is a timeout. Celery's soft limit interrupts the job's thread
    mid-call, and that call may wrap the interruption (botocore does) or fail because of it."""
    try:
        yield
    except NarrationTimeoutError:
        raise
    except Exception as e:
        if time_limit_hit(e) or time.monotonic() >= deadline:
            raise NarrationTimeoutError(f"the job ran past its soft time limit of {limit_s} s "
                                        f"(stopped in {type(e).__name__}: {str(e)[:200]})") from e
        raise


def _narrate(job_id: str, run: int, request: NarrationRequest, rt: Runtime, report: ProgressHook
             ) -> NarrationOutcome:
    """narrate, with the first chunk published frame by frame when the job asks for it and the model can."""
    assert rt.model is not None
    frames = FramePublisher.for_job(rt.jobs.redis, job_id, run, rt.model, request.stream_frames)
    try:
        with rt.model.serving_job():
            return narrate(job_id, request, rt.model, rt.objects, rt.settings.max_chunk_chars, rt.model_info(),
                           report, first_chunk_chars=rt.settings.first_chunk_chars, frames=frames)
    finally:
        if frames is not None:
            frames.close()


def _hand_back(job_id: str, rt: Runtime, worker: str, lock: JobLock, progress: dict[str, Any]) -> JobState | None:
    """This worker is draining: the rows in flight are stored; the job goes back to the queue, its lock released."""
    lock.stop_beating()
    if rt.jobs.hand_back(job_id, lock.token, worker) is None:
        log.warning("job %s: not handed back (it ended, or its run lock expired); left as it is", job_id)
        return None
    log.info("job %s: handed back to the queue, %s of %s chunks stored (this worker is draining)", job_id,
             progress.get("chunks_done"), progress.get("chunks_total"))
    return JobState.QUEUED


def _options(kept: dict[str, Any]) -> dict[str, Any]:
    """A succeeded job's request as kept (its text replaced by its size and hash), less those two."""
    return {k: v for k, v in kept.items() if k not in ("text_chars", "text_sha256")}
