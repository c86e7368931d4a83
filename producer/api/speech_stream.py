"""A job's audio as it is made: each chunk, once stored, finished as the stitcher finishes it (producer/mastering.py),
encoded in the requested format and handed on; the pauses between chunks as in the final file."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi.concurrency import run_in_threadpool

from producer import keys
from producer.api.events import watch_job
from producer.audio_formats import AudioEncoder, audio_format
from producer.errors import EchoForgeError, ErrorCode, JobNotReadyError
from producer.job import Job
from producer.mastering import finish_chunk, pause_after
from producer.states import JobState
from producer.storage import Storage

__all__ = ["JobEndedError", "stream_job_audio"]

STREAM_SLICE_S = 1  # seconds of audio encoded and sent at a time


class JobEndedError(EchoForgeError):
    """The job ended without audio (failed, canceled or expired); `code` is its error's."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        super().__init__(f"job {job.id} ended {job.state.value}: {error.get('message', '')}".rstrip(": "))
        known = error.get("code") in ErrorCode._value2member_map_
        self.code = ErrorCode(error["code"]) if known else ErrorCode.INTERNAL_ERROR  # type: ignore[misc]


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


def _chunk_audio(storage: Storage, job_id: str, index: int) -> tuple[np.ndarray, int]:
    """Chunk `index` as stored (32-bit float WAV)."""
    import soundfile as sf

    data = storage.get_bytes(storage.key_for(job_id, keys.CHUNK_OBJECT.format(index=index)))
    if data is None:
        raise JobNotReadyError(f"job {job_id}: chunk {index} is counted as done but not in storage")
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return audio, int(rate)


def _ends_paragraph(storage: Storage, job_id: str, index: int) -> bool:
    """Whether a paragraph ends with chunk `index` (from the manifest), so a longer pause follows it."""
    manifest = storage.get_bytes(storage.key_for(job_id, keys.MANIFEST_OBJECT))
    entries = {entry["index"]: entry for entry in json.loads(manifest or b'{"chunks": []}')["chunks"]}
    return bool(entries.get(index, {}).get("paragraph_end"))


async def stream_job_audio(state: Any, job_id: str, fmt: str) -> AsyncIterator[bytes]:
    """The job's audio in `fmt`, a piece per stored chunk as the job goes on; the encoder's tail once it succeeded.

    A chunk is encoded a slice at a time, each slice handed on at once, so the first bytes do not wait for a whole
    chunk's encoding; the pause before a chunk is read from the manifest only then, off the first audio's path.
    Raises JobEndedError when the job ends without succeeding (before the first piece: the caller answers with an
    error; later, the stream is cut short). Formats that cannot stream (m4a) are sent whole once the job succeeded.
    """
    if not audio_format(fmt).streamable:
        yield await _whole_file(state, job_id)
        return
    sink, encoder, sent = _Pending(), None, 0
    try:
        async for job in watch_job(state.async_redis, job_id):
            if job.state in (JobState.FAILED, JobState.CANCELED, JobState.EXPIRED):
                raise JobEndedError(job)
            while sent < int(job.progress.get("chunks_done", 0)):
                audio, rate = await run_in_threadpool(_chunk_audio, state.storage, job_id, sent)
                if encoder is None:
                    encoder = AudioEncoder.open(fmt, rate, sink)  # type: ignore[arg-type]
                else:
                    paragraph_end = await run_in_threadpool(_ends_paragraph, state.storage, job_id, sent - 1)
                    encoder.write(pause_after(paragraph_end, rate))
                finished = finish_chunk(audio, rate)
                for start in range(0, len(finished), STREAM_SLICE_S * rate):
                    encoder.write(finished[start: start + STREAM_SLICE_S * rate])
                    yield sink.take()
                sent += 1
        if encoder is not None:
            encoder.close()
            yield sink.take()
    finally:
        if encoder is not None:
            encoder.abort()


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
