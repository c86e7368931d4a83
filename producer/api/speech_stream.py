"""A job's audio as it is made: each chunk, once stored, finished as the stitcher finishes it (producer/mastering.py),
encoded in the requested format and handed on; the pauses between chunks as in the final file.

A frame-streaming job's (request.stream_frames) first chunk comes instead a few frames at a time while it is generated
(producer/api/frame_stream.py). Its level cannot be finished before the chunk is whole, so such a response carries
every chunk at its raw decoded level (the stored chunks' own samples, not loudness-normalized or faded); the stored
narration is mastered as always."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from producer import keys
from producer.api.events import watch_job
from producer.api.frame_stream import first_chunk_frames
from producer.api.stored_chunks import JobEndedError, stored_chunk
from producer.audio_formats import AudioEncoder, audio_format
from producer.errors import JobNotReadyError
from producer.mastering import finish_chunk, pause_after
from producer.states import JobState
from producer.storage import Storage

__all__ = ["JobEndedError", "stream_job_audio"]

STREAM_SLICE_S = 1  # seconds of audio encoded and sent at a time


class _Pending:
    """The sink an encoder writes to; what it holds is taken after each chunk."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> int:
        self.data += data
        return len(data)

    def take(self) -> bytes:
        taken, self.data = bytes(self.data), bytearray()
        return taken


def _ends_paragraph(storage: Storage, job_id: str, index: int) -> bool:
    """Whether a paragraph ends with chunk `index` (from the manifest), so a longer pause follows it."""
    manifest = storage.get_bytes(storage.key_for(job_id, keys.MANIFEST_OBJECT))
    entries = {entry["index"]: entry for entry in json.loads(manifest or b'{"chunks": []}')["chunks"]}
    return bool(entries.get(index, {}).get("paragraph_end"))


async def stream_job_audio(state: Any, job_id: str, fmt: str, frames: bool = False) -> AsyncIterator[bytes]:
    """The job's audio in `fmt`, a piece per stored chunk as the job goes on; the encoder's tail once it succeeded.

    A chunk is encoded a slice at a time, each slice handed on at once, so the first bytes do not wait for a whole
    chunk's encoding; the pause before a chunk is read from the manifest only then, off the first audio's path.
    `frames` (a frame-streaming job): chunk 0 is sent as its frames are decoded, and every chunk at its raw level.
    Raises JobEndedError when the job ends without succeeding (before the first piece: the caller answers with an
    error; later, the stream is cut short). Formats that cannot stream (m4a) are sent whole once the job succeeded.
    """
    if not audio_format(fmt).streamable:
        yield await _whole_file(state, job_id)
        return
    out = _Encoding(fmt)
    try:
        if frames:
            async for audio, rate in first_chunk_frames(state, job_id):
                if piece := out.write(audio, rate):
                    yield piece
        async for piece in _stored_chunks(state, job_id, out, 1 if frames else 0, raw=frames):
            yield piece
        yield out.close()
    finally:
        out.abort()


class _Encoding:
    """The response's encoder, opened at the first audio's rate; `write` returns the bytes ready to send."""

    def __init__(self, fmt: str) -> None:
        self.fmt, self.sink = fmt, _Pending()
        self.encoder: AudioEncoder | None = None

    @property
    def opened(self) -> bool:
        return self.encoder is not None

    def write(self, audio: np.ndarray, rate: int) -> bytes:
        if self.encoder is None:
            self.encoder = AudioEncoder.open(self.fmt, rate, self.sink)  # type: ignore[arg-type]
        self.encoder.write(audio)
        return self.sink.take()

    def close(self) -> bytes:
        if self.encoder is None:
            return b""
        self.encoder.close()
        self.encoder = None
        return self.sink.take()

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.abort()


async def _stored_chunks(state: Any, job_id: str, out: _Encoding, sent: int, raw: bool) -> AsyncIterator[bytes]:
    """Chunks `sent`.. as each is stored, each after its pause (finished, unless `raw`), until the job succeeded."""
    async for job in watch_job(state.async_redis, job_id):
        if job.state in (JobState.FAILED, JobState.CANCELED, JobState.EXPIRED):
            raise JobEndedError(job)
        while sent < int(job.progress.get("chunks_done", 0)):
            audio, rate = await run_in_threadpool(stored_chunk, state.storage, job_id, sent)
            if out.opened:
                paragraph_end = await run_in_threadpool(_ends_paragraph, state.storage, job_id, sent - 1)
                yield out.write(pause_after(paragraph_end, rate), rate)
            level = audio if raw else finish_chunk(audio, rate)
            for start in range(0, len(level), STREAM_SLICE_S * rate):
                yield out.write(level[start: start + STREAM_SLICE_S * rate], rate)
            sent += 1


async def _whole_file(state: Any, job_id: str) -> bytes:
    """The job's stored narration, once it has succeeded."""
    async for job in watch_job(state.async_redis, job_id):
        if job.state is JobState.SUCCEEDED and job.result:
            data = await run_in_threadpool(state.storage.get_bytes, job.result["key"])
            if data is None:
                raise JobNotReadyError(f"job {job_id}: its narration is not in storage")
            return bytes(data)
        if job.state.is_terminal:
            raise JobEndedError(job)
    raise JobNotReadyError(f"job {job_id}: its record is gone")
