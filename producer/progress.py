"""A job's progress as a terminal progress bar while waiting for it (the CLI and `echoforge up`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from tqdm import tqdm

from producer.job import Job

if TYPE_CHECKING:
    from producer.client import NarrationClient

__all__ = ["wait_with_progress"]


def wait_with_progress(client: NarrationClient, job_id: str, timeout: float | None,
                       warn_no_worker: bool = True) -> Job:
    """Wait for the job with a progress bar on stderr; says once if no worker consumes its queue."""
    from producer.queue_watch import NoWorkerCheck

    bar = tqdm(total=1, unit="chunk", desc=job_id[:8], file=sys.stderr, disable=None, leave=False)
    no_worker = NoWorkerCheck(client) if warn_no_worker else None

    def show(job: Job) -> None:
        bar.total = max(1, job.progress.get("chunks_total", 1))
        bar.n = job.progress.get("chunks_done", 0)
        bar.set_postfix_str(f"{job.state.value} {job.progress.get('audio_s', 0):.1f}s audio", refresh=True)
        if no_worker is not None and (warning := no_worker.check(job)) is not None:
            tqdm.write(warning, file=sys.stderr)

    try:
        return client.wait(job_id, timeout=timeout, on_change=show)
    finally:
        bar.close()
