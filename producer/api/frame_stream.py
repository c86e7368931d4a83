"""A frame-streaming job's first chunk as the worker publishes it (worker/narration/frame_publish.py): its pieces
as they are decoded, read from the job's Redis stream; the stored chunk wherever the pieces do not reach.

The stream is followed until its end marker. Once chunk 0 is stored (the job record says so) the worker has
published all it will for it, so whatever the pieces did not cover (none were published: the model cannot stream,
its streaming codec was busy, the job resumed after chunk 0 was stored; or publishing stopped) is sent from the stored
chunk, from the sample the listener reached. A resumed run publishes its pieces again from the start: those up to the
sample reached are skipped (same seed, so the same audio on the same device).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from producer import keys
from producer.api.events import job_record
from producer.api.stored_chunks import JobEndedError, stored_chunk
from producer.errors import JobNotReadyError
from producer.states import JobState

__all__ = ["first_chunk_frames"]

BLOCK_MS = 1000  # the job record is re-read at least this often while no piece comes
READ_COUNT = 64
_ENDED = (JobState.FAILED, JobState.CANCELED, JobState.EXPIRED)


@dataclass
class _Follower:
    """Which run's pieces are followed, and how many samples of chunk 0 the listener has had."""

    run: int = -1
    position: int = 0  # samples of the followed run's pieces read so far
    sent: int = 0  # samples of chunk 0 handed on

    def take(self, fields: dict[bytes, bytes]) -> tuple[np.ndarray | None, bool]:
        """(the samples of this entry not yet sent, whether it ends chunk 0)."""
        run, seq = int(fields[b"run"]), int(fields[b"seq"])
        if run > self.run and seq == 0:  # a (resumed) run starts over: skip what the listener had
            self.run, self.position = run, 0
        if run != self.run:
            return None, False
        if b"end" in fields:
            return None, True
        audio = np.frombuffer(fields[b"pcm"], dtype="<f4")
        skip, self.position = self.sent - self.position, self.position + len(audio)
        fresh = audio[max(skip, 0):]
        self.sent += len(fresh)
        return fresh, False


async def first_chunk_frames(state: Any, job_id: str) -> AsyncIterator[tuple[np.ndarray, int]]:
    """(float32 samples, rate) of chunk 0 as its frames are decoded, at the decoder's raw level; raises
    JobEndedError when the job ends failed, canceled or expired first."""

    client, key, last, follower = state.async_redis, keys.frame_stream_key(job_id), "0-0", _Follower()
    while True:
        job = await job_record(client, job_id)
        if job is None:
            raise JobNotReadyError(f"job {job_id}: its record is gone")
        if job.state in _ENDED:
            raise JobEndedError(job)
        stored = int(job.progress.get("chunks_done", 0)) >= 1 or job.state is JobState.SUCCEEDED
        reply = await client.xread({key: last}, count=READ_COUNT, block=None if stored else BLOCK_MS)
        entries = reply[0][1] if reply else []
        for entry_id, fields in entries:
            last = entry_id
            audio, ended = follower.take(fields)
            if audio is not None and len(audio):
                yield audio, int(fields[b"rate"])
            if ended:
                return
        if stored and len(entries) < READ_COUNT:  # everything published is read, and no end marker came
            stored_audio, rate = await run_in_threadpool(stored_chunk, state.storage, job_id, 0)
            if follower.sent < len(stored_audio):
                yield stored_audio[follower.sent:], rate
            return

