"""One delivery attempt of a webhook message: check where it goes, sign it, POST it (short timeout, no redirects
followed), record the attempt on the job, and schedule the next one with exponential backoff, or give up."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import httpx

from producer.api_keys import ApiKeyStore
from producer.errors import WebhookAddressError, WebhookAddressRefusedError
from producer.job import iso_time
from producer.settings import Settings
from producer.webhooks.address import webhook_target
from producer.webhooks.signing import signed_headers
from producer.webhooks.store import WebhookMessage, WebhookStore

__all__ = ["RETRY_STEPS", "Deliverer", "Outcome", "message_ttl_s", "retry_delays"]

log = logging.getLogger(__name__)

# The waits before attempts 2, 3, …, in units of ECHOFORGE_WEBHOOK_RETRY_BASE_S (5 s: 5 s, 30 s, 2 min, 10 min,
# 30 min, 1 h, 2 h, 4 h, 10 h, 10 h — 27.7 h from the first attempt to the last).
RETRY_STEPS = (1, 6, 24, 120, 360, 720, 1440, 2880, 7200, 7200)
USER_AGENT = "EchoForge-Webhooks/1"


class Outcome(str, Enum):
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED_WILL_RETRY = "failed_will_retry"  # any other answer, a timeout, no connection, a name that did not resolve
    GAVE_UP = "gave_up"  # the last attempt failed too
    REFUSED_PRIVATE = "refused_private"  # the URL's host now resolves to a private address: never sent, not retried


def retry_delays(base_s: float) -> list[float]:
    return [step * base_s for step in RETRY_STEPS]


def message_ttl_s(settings: Settings) -> int:
    """How long a message (and a job's attempts) outlive the whole retry schedule: a day more."""
    return int(sum(retry_delays(settings.webhook_retry_base_s))) + 24 * 3600


@dataclass(frozen=True)
class _Answer:
    status_code: int | None
    error: str | None
    refused: bool = False

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class Deliverer:
    """Delivers messages one attempt at a time; `count` hears every outcome (metrics)."""

    def __init__(self, settings: Settings, store: WebhookStore, secrets: ApiKeyStore,
                 count: Callable[[Outcome], None] = lambda _: None) -> None:
        self.settings, self.store, self.secrets, self.count = settings, store, secrets, count

    def deliver(self, webhook_id: str) -> Outcome | None:
        """One attempt; None when the message is gone (delivered, given up, or expired)."""
        message = self.store.message(webhook_id)
        if message is None:
            log.warning("webhook %s: nothing to send (delivered, given up or expired)", webhook_id)
            return None
        attempt, started = self.store.next_attempt(webhook_id), time.time()
        answer = self._send(message)
        outcome, next_at = self._next(answer, attempt)
        self.store.record_attempt(message.job_id, {
            "webhook_id": message.id, "event": message.event, "attempt": attempt, "at": iso_time(started),
            "outcome": outcome.value, "status_code": answer.status_code, "error": answer.error,
            "next_attempt_at": iso_time(next_at)}, max(self.settings.finished_job_ttl_s, message_ttl_s(self.settings)))
        if next_at is None:
            self.store.forget(webhook_id)
        else:
            self.store.retry_at(webhook_id, next_at)
        self.count(outcome)
        log.info("job %s: webhook %s (%s) attempt %d: %s%s", message.job_id, message.id, message.event, attempt,
                 outcome.value, f" ({answer.error})" if answer.error else "")
        return outcome

    def _next(self, answer: _Answer, attempt: int) -> tuple[Outcome, float | None]:
        """The outcome of this attempt and when the next one is due (None: no more)."""
        if answer.ok:
            return Outcome.DELIVERED, None
        if answer.refused:
            return Outcome.REFUSED_PRIVATE, None
        delays = retry_delays(self.settings.webhook_retry_base_s)
        if attempt > len(delays):
            return Outcome.GAVE_UP, None
        return Outcome.FAILED_WILL_RETRY, time.time() + delays[attempt - 1]

    def _send(self, message: WebhookMessage) -> _Answer:
        try:
            target = webhook_target(message.url, self.settings.webhook_allow_private)
        except WebhookAddressError as e:
            return _Answer(None, str(e).removeprefix("webhook_url: "), isinstance(e, WebhookAddressRefusedError))
        body = message.body.encode()
        secret = self.secrets.webhook_secret(message.tenant)  # read at each attempt: a rotation applies at once
        headers: dict[str, Any] = {**signed_headers(secret, message.id, int(time.time()), body), **target.headers,
                                   "content-type": "application/json", "user-agent": USER_AGENT}
        client = httpx.Client(timeout=self.settings.webhook_timeout_s, follow_redirects=False, trust_env=False)
        try:  # a client per attempt: a pooled connection would skip the address check
            with client, client.stream("POST", target.url, content=body, headers=headers,
                                       extensions=target.extensions) as response:  # the answer's body is never read
                status = response.status_code
        except Exception as e:  # whatever the receiver or the network does, it is one failed attempt
            return _Answer(None, f"{type(e).__name__}: {e}"[:200])
        return _Answer(status, None if 200 <= status < 300 else f"HTTP {status}")
