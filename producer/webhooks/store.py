"""WebhookStore: the webhook records in Redis — the outbox stream the transition script writes, each message until it
is delivered or given up, the retries that are due, and every job's delivery attempts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import redis

from producer import keys
from producer.store import lua_script, text

__all__ = ["OutboxEntry", "WebhookMessage", "WebhookStore"]

# A job's newest attempts kept (a long job with progress events makes many).
ATTEMPTS_KEPT = 1000


@dataclass(frozen=True)
class OutboxEntry:
    """One event written by a transition: stream entry id, job, event name, when (Unix seconds)."""

    id: str
    job_id: str
    event: str
    at: float


@dataclass(frozen=True)
class WebhookMessage:
    """One event's message, the same body and id on every attempt."""

    id: str
    job_id: str
    tenant: str
    event: str
    url: str
    body: str


def _entries(raw: Any) -> list[OutboxEntry]:
    found = []
    for entry_id, data in raw or []:
        if data:  # an entry deleted while pending comes back empty
            fields = {text(k): text(v) for k, v in data.items()}
            found.append(OutboxEntry(text(entry_id), fields["job_id"], fields["event"], float(fields["at"])))
    return found


class WebhookStore:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim_due = client.register_script(lua_script("claim_due_webhooks"))

    # ---- the outbox: relays read it as one consumer group ---------------------------------------------------------

    def join_outbox(self) -> None:
        """The relays' consumer group, from the first entry ever written (events of jobs that ended before any
        webhook worker ran are sent too)."""
        try:
            self.redis.xgroup_create(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_RELAY_GROUP, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def read_outbox(self, consumer: str, count: int, block_ms: int) -> list[OutboxEntry]:
        streams: Any = self.redis.xreadgroup(keys.WEBHOOK_RELAY_GROUP, consumer, {keys.WEBHOOK_OUTBOX_KEY: ">"},
                                             count=count, block=block_ms)
        return [entry for _, raw in streams or [] for entry in _entries(raw)]

    def reclaim_outbox(self, consumer: str, idle_ms: int, count: int) -> list[OutboxEntry]:
        """Entries another relay read but never finished (it died) for over `idle_ms`."""
        reply: Any = self.redis.xautoclaim(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_RELAY_GROUP, consumer, idle_ms,
                                           count=count)
        return _entries(reply[1])

    def relayed(self, entry_id: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.xack(keys.WEBHOOK_OUTBOX_KEY, keys.WEBHOOK_RELAY_GROUP, entry_id)
        pipe.xdel(keys.WEBHOOK_OUTBOX_KEY, entry_id)
        pipe.execute()

    # ---- messages and their retries -------------------------------------------------------------------------------

    def add_message(self, message: WebhookMessage, ttl_s: int) -> None:
        """Record a message (again, for a relay that reads its entry twice: the same fields, its attempt count kept)."""
        key = keys.webhook_message_key(message.id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(key, mapping=asdict(message))
        pipe.expire(key, ttl_s)
        pipe.execute()

    def message(self, webhook_id: str) -> WebhookMessage | None:
        data: Any = self.redis.hgetall(keys.webhook_message_key(webhook_id))
        fields = {text(k): text(v) for k, v in data.items()}
        names = WebhookMessage.__dataclass_fields__
        return WebhookMessage(**{k: fields[k] for k in names}) if names.keys() <= fields.keys() else None

    def next_attempt(self, webhook_id: str) -> int:
        """Count an attempt of this message; its number, from 1."""
        return int(self.redis.hincrby(keys.webhook_message_key(webhook_id), "attempts", 1))  # type: ignore[arg-type]

    def forget(self, webhook_id: str) -> None:
        """Delivered or given up: nothing more to send."""
        self.redis.delete(keys.webhook_message_key(webhook_id))

    def retry_at(self, webhook_id: str, due: float) -> None:
        self.redis.zadd(keys.WEBHOOK_RETRIES_KEY, {webhook_id: due})

    def claim_due(self, now: float, limit: int) -> list[str]:
        """Messages whose next attempt is due, taken off the retries set in the same step (one relay sends each)."""
        claimed: Any = self._claim_due(keys=[keys.WEBHOOK_RETRIES_KEY], args=[repr(now), limit])
        return [text(i) for i in claimed]

    # ---- a job's attempts ------------------------------------------------------------------------------------------

    def record_attempt(self, job_id: str, attempt: dict[str, Any], ttl_s: int) -> None:
        key = keys.webhook_attempts_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.rpush(key, json.dumps(attempt, separators=(",", ":")))
        pipe.ltrim(key, -ATTEMPTS_KEPT, -1)
        pipe.expire(key, ttl_s)
        pipe.execute()

    def attempts(self, job_id: str) -> list[dict[str, Any]]:
        raw: Any = self.redis.lrange(keys.webhook_attempts_key(job_id), 0, -1)
        return [json.loads(item) for item in raw]
