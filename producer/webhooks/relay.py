"""The relay: moves the outbox's events to the delivery queue as messages, and sends the retries that are due.

A thread in each webhook worker's main process. Relays share the outbox as one consumer group; an entry is
acknowledged (and deleted) only once its message is recorded and sent, and one a dead relay left is taken over
after a minute, so no event is lost; a message sent twice has the same webhook-id (receivers deduplicate by it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from producer.errors import JobNotFoundError
from producer.job import Job, iso_time
from producer.settings import Settings
from producer.store import JobStore
from producer.webhooks.delivery import message_ttl_s
from producer.webhooks.signing import webhook_id
from producer.webhooks.store import OutboxEntry, WebhookMessage, WebhookStore

__all__ = ["Relay", "payload"]

log = logging.getLogger(__name__)

BATCH = 100
BLOCK_MS = 500  # how long one read waits for new events; retries that fall due meanwhile wait at most this long
RECLAIM_IDLE_MS = 60_000
RECLAIM_EVERY_S = 30.0


def payload(event: str, at: float, job: Job) -> str:
    """The body every attempt of an event's message sends: its type, when it happened, and the public job record as
    it was when relayed (moments after the event; `data.state` may already be further on)."""
    return json.dumps({"type": f"narration.{event}", "timestamp": iso_time(at), "data": job.to_public()},
                      separators=(",", ":"))


class Relay:
    def __init__(self, settings: Settings, jobs: JobStore, store: WebhookStore, send: Callable[[str], None],
                 consumer: str) -> None:
        self.settings, self.jobs, self.store, self.send, self.consumer = settings, jobs, store, send, consumer
        self._stop = threading.Event()
        self._next_reclaim = 0.0

    def run_once(self) -> int:
        """Relay what the outbox has (waiting up to BLOCK_MS for it), then the due retries; how many were sent."""
        entries = self.store.read_outbox(self.consumer, BATCH, BLOCK_MS)
        if time.monotonic() >= self._next_reclaim:
            self._next_reclaim = time.monotonic() + RECLAIM_EVERY_S
            entries += self.store.reclaim_outbox(self.consumer, RECLAIM_IDLE_MS, BATCH)
        for entry in entries:
            try:
                self._relay(entry)
            except Exception:  # left pending: taken over again after RECLAIM_IDLE_MS
                log.warning("job %s: relaying its %s webhook failed; retried later", entry.job_id, entry.event,
                            exc_info=True)
        due = self.store.claim_due(time.time(), BATCH)
        for message_id in due:
            self._send_retry(message_id)
        return len(entries) + len(due)

    def _relay(self, entry: OutboxEntry) -> None:
        try:
            job = self.jobs.get(entry.job_id)
        except JobNotFoundError:
            log.warning("job %s: its record is gone; its %s webhook is dropped", entry.job_id, entry.event)
            self.store.relayed(entry.id)
            return
        url = job.request.get("webhook_url")
        if url:
            message = WebhookMessage(webhook_id(job.id, entry.id), job.id, job.tenant or self.settings.anonymous_tenant,
                                     entry.event, url, payload(entry.event, entry.at, job))
            self.store.add_message(message, message_ttl_s(self.settings))
            self.send(message.id)
        self.store.relayed(entry.id)

    def _send_retry(self, message_id: str) -> None:
        try:
            self.send(message_id)
        except Exception:  # the broker refused: claim it again next time round
            self.store.retry_at(message_id, time.time())
            raise

    def start(self) -> threading.Thread:
        self.store.join_outbox()
        thread = threading.Thread(target=self._loop, name="echoforge-webhook-relay", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # Redis or the broker away for a moment: try again
                log.warning("webhook relay: a round failed; retrying", exc_info=True)
                self._stop.wait(1.0)
