"""One narration job: start -> synthesize -> encode -> store -> succeed, checking for cancel on the way."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from producer.jobs import JobState
from worker.audio import CONTENT_TYPES, encode, file_sha256
from worker.models import CSMModelLoadError
from worker.runtime import Runtime

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(job_id: str, rt: Runtime, worker: str) -> JobState | None:
    """Run one job to a terminal state; returns that state, or None when the job was not runnable."""
    store = rt.store
    job = store.start(job_id, worker=worker, model=rt.model_info, chunks_done=0, chunks_total=1, audio_s=0.0)
    if job is None:
        log.info("job %s: not started (already %s)", job_id, store.get(job_id).state.value)
        return None
    if rt.model is None:
        raise CSMModelLoadError(rt.model_error or "no model loaded in this worker")
    if job.cancel_requested:
        return _cancel(rt, job_id)
    request = job.narration_request()
    log.info("job %s: attempt %d on %s, %d chars", job_id, job.attempts, worker, len(request.text))

    audio, sample_rate = rt.model.generate_speech(
        request.text, speaker_id=request.speaker_id, temperature=request.temperature, top_k=request.top_k
    )
    duration_s = round(len(audio) / sample_rate, 3)
    progress = {"chunks_done": 1, "chunks_total": 1, "audio_s": duration_s}
    job = store.progress(job_id, **progress)
    if job is None:
        log.info("job %s: ended elsewhere while synthesizing; result discarded", job_id)
        return None
    if job.cancel_requested:
        return _cancel(rt, job_id)

    name = f"narration.{request.output_format}"
    key = rt.storage.key_for(job_id, name)
    with tempfile.TemporaryDirectory(prefix="echoforge-") as tmp:
        path = Path(tmp) / name
        encode(audio, sample_rate, path, request.output_format)
        result: dict[str, Any] = {
            "url": rt.storage.url_for(key),
            "bucket": rt.storage.bucket,
            "key": key,
            "format": request.output_format,
            "duration_s": duration_s,
            "sample_rate": sample_rate,
            "bytes": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        rt.storage.put_file(key, path, CONTENT_TYPES[request.output_format])
    store.succeed(job_id, result, request, **progress)
    log.info("job %s: succeeded, %.2f s of audio at %s", job_id, duration_s, result["url"])
    return JobState.SUCCEEDED


def _cancel(rt: Runtime, job_id: str) -> JobState:
    rt.store.finish_canceled(job_id)
    log.info("job %s: canceled", job_id)
    return JobState.CANCELED
