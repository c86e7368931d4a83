"""Server-sent events for one job: its record at every state change and progress update, until it ends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis

from producer import keys
from producer.job import Job

__all__ = ["job_events", "job_record", "watch_job"]

RECHECK_S = 1.0  # the record is re-read at least this often, in case a notification is missed


async def job_record(client: aioredis.Redis, job_id: str) -> Job | None:
    data: Any = await client.hgetall(keys.job_key(job_id))  # type: ignore[misc]
    return Job.from_hash({k.decode(): v.decode() for k, v in data.items()}) if data else None


async def watch_job(client: aioredis.Redis, job_id: str) -> AsyncIterator[Job]:
    """The job's record at every change (state, chunks done, phase, a cancel asked for), the current one first;
    the last is its terminal state. Ends at once if the record is gone."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.job_events_channel(job_id))
    last: tuple[Any, ...] | None = None
    try:
        while True:
            job = await job_record(client, job_id)
            if job is None:
                return
            seen = (job.state, job.progress.get("chunks_done"), job.progress.get("phase"), job.cancel_requested)
            if seen != last:
                yield job
                last = seen
            if job.state.is_terminal:
                return
            await _wait_for_message(pubsub)
    finally:
        await pubsub.aclose()


async def job_events(client: aioredis.Redis, job_id: str) -> AsyncIterator[dict[str, str]]:
    """Server-sent events of watch_job: `state` when the state changed, else `progress`; each carries the public
    job record."""
    previous = None
    async for sequence, job in _numbered(watch_job(client, job_id)):
        kind = "state" if previous is None or previous.state != job.state else "progress"
        yield {"event": kind, "id": str(sequence), "data": json.dumps(job.to_public())}
        previous = job


async def _numbered(jobs: AsyncIterator[Job]) -> AsyncIterator[tuple[int, Job]]:
    sequence = 0
    async for job in jobs:
        sequence += 1
        yield sequence, job


async def _wait_for_message(pubsub: aioredis.client.PubSub) -> None:
    try:
        await pubsub.get_message(timeout=RECHECK_S)
    except TimeoutError:
        return
