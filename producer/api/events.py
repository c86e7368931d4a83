"""Server-sent events for one job: its record at every state change and progress update, until it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from producer import keys
from producer.job import Job

__all__ = ["job_events"]

RECHECK_S = 1.0  # the record is re-read at least this often, in case a notification is missed


async def _record(client: aioredis.Redis, job_id: str) -> Job | None:
    data: Any = await client.hgetall(keys.job_key(job_id))  # type: ignore[misc]
    return Job.from_hash({k.decode(): v.decode() for k, v in data.items()}) if data else None


async def job_events(client: aioredis.Redis, job_id: str) -> AsyncIterator[dict[str, str]]:
    """One event per change of the job, the current record first: `state` when its state changed, else `progress`,
    the data the public job record; the last event is its terminal state."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.job_events_channel(job_id))
    last: tuple[Any, ...] | None = None
    sequence = 0
    try:
        while True:
            job = await _record(client, job_id)
            if job is None:
                return
            seen = (job.state, job.progress.get("chunks_done"), job.progress.get("phase"), job.cancel_requested)
            if seen != last:
                sequence += 1
                kind = "state" if last is None or last[0] != job.state else "progress"
                yield {"event": kind, "id": str(sequence), "data": json.dumps(job.to_public())}
                last = seen
            if job.state.is_terminal:
                return
            await _wait_for_message(pubsub)
    finally:
        await pubsub.aclose()


async def _wait_for_message(pubsub: aioredis.client.PubSub) -> None:
    try:
        await pubsub.get_message(timeout=RECHECK_S)
    except TimeoutError:
        return
