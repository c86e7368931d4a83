"""The per-job run lock: one delivery runs a job at a time; a heartbeat keeps the lock while it runs."""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from types import TracebackType

from producer.errors import JobBusyError
from producer.store import JobStore

__all__ = ["JobLock"]

log = logging.getLogger(__name__)


class JobLock:
    """`with JobLock(store, job_id, ttl_s):` holds the lock, refreshed every ttl/3, released on exit.

    If this process dies, the lock expires after ttl_s and a redelivery may take the job over.
    """

    def __init__(self, store: JobStore, job_id: str, ttl_s: float) -> None:
        self.store, self.job_id, self.ttl_s = store, job_id, ttl_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"lock-{job_id[:8]}", daemon=True)

    def __enter__(self) -> JobLock:
        if not self.store.lock(self.job_id, self.token, self.ttl_s):
            raise JobBusyError(f"job {self.job_id} is running under another delivery")
        self._beat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop_beating()
        self.store.unlock(self.job_id, self.token)

    def stop_beating(self) -> None:
        """Stop refreshing the lock (before it is released some other way, e.g. by handing the job back)."""
        self._stop.set()
        if self._beat.is_alive():
            self._beat.join()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                if not self.store.refresh_lock(self.job_id, self.token, self.ttl_s):
                    log.error("job %s: lost its run lock (expired); another delivery may take over", self.job_id)
                    return
            except Exception:  # Redis briefly unreachable: try again at the next beat
                log.warning("job %s: lock heartbeat failed", self.job_id, exc_info=True)
