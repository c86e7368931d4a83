"""While waiting for a job: say so when it stays queued because no worker consumes its queue."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from producer.job import Job
from producer.settings import redact_url
from producer.states import JobState

if TYPE_CHECKING:
    from producer.client import NarrationClient

__all__ = ["NO_WORKER_CHECK_AFTER_S", "NoWorkerCheck"]

log = logging.getLogger(__name__)

# How long a job may stay queued during a wait before we ask whether any worker consumes its queue.
NO_WORKER_CHECK_AFTER_S = 5.0


class NoWorkerCheck:
    """Fed every job record a wait reads; asks the workers once, after the job stayed queued for `after_s`."""

    def __init__(self, client: NarrationClient, after_s: float = NO_WORKER_CHECK_AFTER_S) -> None:
        self.client = client
        self.after_s = after_s
        self._since = time.monotonic()
        self._done = False

    def check(self, job: Job) -> str | None:
        """The warning to show, at most once per wait; None otherwise, and when asking the workers fails."""
        if self._done or job.state is not JobState.QUEUED or time.monotonic() - self._since < self.after_s:
            return None
        self._done = True
        try:
            if self.client.queue_consumers():
                return None
        except Exception as e:  # a failed check must not end the wait
            log.debug("could not ask the workers which queues they consume: %r", e)
            return None
        settings = self.client.settings
        return (f"echoforge: no worker is consuming queue {settings.queue} on {redact_url(settings.redis_url)} "
                f"(job still queued after {self.after_s:g} s); is one running?")
