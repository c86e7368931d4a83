"""What both ways of streaming a job's audio read: a stored chunk, and the error for a job that ended without audio."""

from __future__ import annotations

import io

import numpy as np

from producer import keys
from producer.errors import EchoForgeError, ErrorCode, JobNotReadyError
from producer.job import Job
from producer.storage import Storage

__all__ = ["JobEndedError", "stored_chunk"]


class JobEndedError(EchoForgeError):
    """The job ended without audio (failed, canceled or expired); `code` is its error's."""

    def __init__(self, job: Job) -> None:
        error = job.error or {}
        super().__init__(f"job {job.id} ended {job.state.value}: {error.get('message', '')}".rstrip(": "))
        known = error.get("code") in ErrorCode._value2member_map_
        self.code = ErrorCode(error["code"]) if known else ErrorCode.INTERNAL_ERROR  # type: ignore[misc]


def stored_chunk(storage: Storage, job_id: str, index: int) -> tuple[np.ndarray, int]:
    """Chunk `index` as stored (32-bit float WAV)."""
    import soundfile as sf

    data = storage.get_bytes(storage.key_for(job_id, keys.CHUNK_OBJECT.format(index=index)))
    if data is None:
        raise JobNotReadyError(f"job {job_id}: chunk {index} is counted as done but not in storage")
    audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return audio, int(rate)
