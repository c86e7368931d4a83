"""NarrationClient: submit, get, wait, cancel, list and download narration jobs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from producer import keys
from producer.celery_config import celery_config, send_job
from producer.errors import InvalidRequestError, JobNotReadyError, JobStateError, SubmitError
from producer.job import Job
from producer.request import DEFAULT_PRIORITY, NarrationRequest, rerender_edit
from producer.settings import Settings, redact_url
from producer.states import JobState
from producer.storage import open_storage
from producer.store import JobStore
from producer.voice import upload_voice_prompt
from producer.webhooks.address import check_webhook_url

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["NarrationClient"]

log = logging.getLogger(__name__)


class NarrationClient:
    """The producer's API. Job status is read from the JobStore, never from the Celery result backend."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.jobs = JobStore.from_settings(self.settings)
        self._local = threading.local()

    @cached_property
    def _celery(self) -> Celery:
        from celery import Celery

        app = Celery("echoforge-producer", set_as_current=False)
        app.conf.update(celery_config(self.settings))
        return app

    def submit(self, request: NarrationRequest | dict[str, Any], voice_prompt: str | Path | None = None,
               tenant: str | None = None, max_queued: int = 0, book: tuple[str, str] | None = None) -> Job:
        """Validate (unless already parsed), record and enqueue. A reused idempotency key returns the job it created.

        `voice_prompt` is a recording (0.5-20 s) of the voice to narrate in; the request's `voice_text` says
        what it says. It is stored before the job is recorded, so a bad file enqueues nothing. `tenant` owns the
        job (the HTTP API's callers); `max_queued` caps the jobs that tenant may have queued at once. A webhook URL
        whose host resolves to a private address is refused (unless ECHOFORGE_WEBHOOK_ALLOW_PRIVATE). `book` is
        (book id, part) for a book's job (producer/books/).
        """
        if not isinstance(request, NarrationRequest):
            request = NarrationRequest.parse(request, voice_upload_pending=voice_prompt is not None)
        if request.webhook_url:
            check_webhook_url(request.webhook_url, self.settings.webhook_allow_private)
        if voice_prompt is not None:
            if not request.voice_text:
                raise InvalidRequestError("a voice prompt needs its transcript (voice_text)")
            request = request.with_voice_prompt(upload_voice_prompt(voice_prompt, open_storage(self.settings)))
        elif request.voice_text and not request.voice_prompt_sha256:
            raise InvalidRequestError("voice_text needs its recording (the voice prompt file)")
        job, created = self.jobs.create(request, self.settings.queue, tenant, max_queued, book)
        if not created:
            if job.request.get("text_sha256", request.text_sha256()) != request.text_sha256() or (
                    "text" in job.request and job.request["text"] != request.text):
                raise InvalidRequestError(f"idempotency key {request.idempotency_key!r} was used for another text "
                                          f"(job {job.id})")
            log.info("job %s: idempotency key reused, not enqueued again", job.id)
            return job
        self._enqueue(job.id, request.priority)
        return job

    def retry(self, job_id: str, tenant: str | None = None) -> Job:
        """Queue a failed or expired job again under its id; it resumes from the chunks it had stored."""
        self.jobs.get(job_id, tenant)
        job = self.jobs.retry(job_id)
        self._enqueue(job.id, job.request.get("priority", DEFAULT_PRIORITY))
        return job

    def rerender(self, job_id: str, chunks: list[int], text: str | None = None, tenant: str | None = None) -> Job:
        """Queue a succeeded job again to make `chunks` anew (one chunk may get corrected `text`), after the job's
        same voice anchor and on new seeds; its narration (and its book's M4B) is then replaced by the new version.
        Everything is checked before the job is touched."""
        job = self.jobs.get(job_id, tenant)
        if job.state is not JobState.SUCCEEDED or not job.result:
            raise JobStateError(f"job {job_id} cannot be re-rendered: it is {job.state.value} (only a succeeded "
                                "job can)")
        edit = rerender_edit(chunks, text, int(job.result["chunks"]), self.settings.max_chunk_chars)
        job = self.jobs.rerender(job_id, edit)
        self._enqueue(job.id, job.request.get("priority", DEFAULT_PRIORITY))
        return job

    def _enqueue(self, job_id: str, priority: int) -> None:
        try:
            send_job(self._celery, job_id, self.settings.queue, priority)
        except Exception as e:
            where = redact_url(self.settings.redis_url)
            self.jobs.fail_to_enqueue(job_id, f"could not enqueue on {where}: {type(e).__name__}")
            raise SubmitError(f"job {job_id}: could not enqueue on {where}") from e
        self.jobs.mark_sent(job_id)
        log.info("job %s: queued on %s", job_id, self.settings.queue)

    def send_task(self, name: str, args: list[Any], queue: str) -> None:
        """Send another task by name (e.g. a book's assembly to the service worker's queue)."""
        self._celery.send_task(name, args=args, queue=queue)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        """The job; with `tenant`, only if that tenant owns it (else JobNotFoundError)."""
        return self.jobs.get(job_id, tenant)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        on_change: Callable[[Job], None] | None = None,
    ) -> Job:
        """Block until the job ends (or `timeout` seconds pass) and return its record.

        Woken by the job's pub/sub channel; re-reads the record at least every second in case a
        notification is missed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pubsub = self._pubsub()
        channel = keys.job_events_channel(job_id)
        pubsub.subscribe(channel)
        try:
            while True:
                job = self.get(job_id)
                if on_change is not None:
                    on_change(job)
                if job.state.is_terminal:
                    return job
                left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if left <= 0:
                    return job
                pubsub.get_message(timeout=left)
        finally:
            pubsub.unsubscribe(channel)

    def _pubsub(self) -> redis.client.PubSub:
        """One pub/sub connection per thread, kept between waits (a new one per wait costs a TCP handshake)."""
        pubsub: redis.client.PubSub | None = getattr(self._local, "pubsub", None)
        if pubsub is None:
            pubsub = self._local.pubsub = self.jobs.redis.pubsub(ignore_subscribe_messages=True)
        return pubsub

    def queue_consumers(self, timeout: float = 1.0) -> list[str]:
        """The Celery workers (hostnames) that answer within `timeout` s and consume this client's queue."""
        replies = self._celery.control.inspect(timeout=timeout).active_queues() or {}
        return sorted(worker for worker, queues in replies.items()
                      if any(queue.get("name") == self.settings.queue for queue in queues or []))

    def cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """Cancel a queued or running job (a re-render is not: it replaces a finished narration, and runs to its end
        rather than leave the job without one)."""
        job = self.jobs.get(job_id, tenant)
        if job.rerender and not job.state.is_terminal:
            raise JobStateError(f"job {job_id} is re-rendering; a re-render cannot be canceled")
        return self.jobs.cancel(job_id)

    def list(self, limit: int = 20, state: JobState | None = None, tenant: str | None = None,
             before: float | None = None) -> list[Job]:
        return self.jobs.list(limit=limit, state=state, tenant=tenant, before=before)

    def download(self, job_id: str, destination: str | Path) -> Path:
        """Copy a succeeded job's narration to `destination`."""
        job = self.get(job_id)
        if job.state is not JobState.SUCCEEDED or not job.result:
            raise JobNotReadyError(f"job {job_id} has no narration to download (state {job.state.value})")
        target = Path(destination)
        open_storage(self.settings).download(job.result["key"], target)
        return target

    def close(self) -> None:
        pubsub = getattr(self._local, "pubsub", None)
        if pubsub is not None:
            pubsub.close()
        self.jobs.close()
