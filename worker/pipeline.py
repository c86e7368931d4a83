"""One narration job: plan chunks -> synthesize each (resume-aware, cancel-aware) -> stitch -> deliver -> succeed."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from producer import keys
from producer.errors import StorageError
from producer.jobs import Job, JobState, NarrationRequest
from worker.audio import PARAGRAPH_PAUSE_S, SENTENCE_PAUSE_S, TARGET_LUFS, decode_wav
from worker.manifest import Manifest
from worker.models import CSMModelLoadError
from worker.runtime import Runtime
from worker.stitch import deliver, stitch
from worker.synthesis import ChunkSynthesizer
from worker.text import chunk_text

__all__ = ["run"]

log = logging.getLogger(__name__)


def run(job_id: str, rt: Runtime, worker: str) -> JobState | None:
    """Run one job to a terminal state; returns that state, or None when the job was not runnable."""
    job = rt.store.start(job_id, worker=worker, model=rt.model_info, phase="planning")
    if job is None:
        log.info("job %s: not started (already %s)", job_id, rt.store.get(job_id).state.value)
        return None
    if rt.model is None:
        raise CSMModelLoadError(rt.model_error or "no model loaded in this worker")
    request = job.narration_request()
    plan = chunk_text(request.text, rt.settings.max_chunk_chars)
    manifest = Manifest.open(rt.storage, job_id, request, rt.model_info, _settings(request, rt), len(plan))
    log.info("job %s: attempt %d on %s, %d chars in %d chunks, %d already stored", job_id, job.attempts, worker,
             len(request.text), len(plan), len(manifest.chunks))
    with tempfile.TemporaryDirectory(prefix=f"echoforge-{job_id[:8]}-") as tmp:
        spool = Path(tmp)
        synthesizer = ChunkSynthesizer(rt.model, request, manifest, spool)
        if request.voice_prompt_sha256:
            synthesizer.load_voice_prompt(*_voice_prompt(rt, request))
        resumed = len(manifest.chunks)
        for chunk in plan:
            if not manifest.done(chunk.index):
                synthesizer.synthesize(chunk)
            if chunk.index == 0:
                synthesizer.adopt_first_chunk(chunk)
            job = _progress(rt, job_id, manifest, resumed, "synthesizing")
            if job is None:
                return None
            if job.cancel_requested:
                manifest.discard()
                rt.store.finish_canceled(job_id)
                log.info("job %s: canceled after %d of %d chunks; its chunks were deleted", job_id,
                         len(manifest.chunks), len(plan))
                return JobState.CANCELED
        _progress(rt, job_id, manifest, resumed, "stitching")
        narration = spool / f"narration.{request.output_format}"
        stitch(manifest, spool, narration, request.output_format)
        result = deliver(manifest, narration, request.output_format)
    rt.store.succeed(job_id, result, request, **_progress_fields(manifest, resumed, "done"))
    log.info("job %s: succeeded, %.1f s of audio in %d chunks (%d flagged) at %s", job_id, result["duration_s"],
             result["chunks"], len(result["flagged_chunks"]), result["url"])
    return JobState.SUCCEEDED


def _progress_fields(manifest: Manifest, resumed: int, phase: str) -> dict[str, Any]:
    return {"chunks_done": len(manifest.chunks), "chunks_total": manifest.data["chunks_total"],
            "chunks_resumed": resumed, "audio_s": manifest.audio_seconds(), "phase": phase}


def _progress(rt: Runtime, job_id: str, manifest: Manifest, resumed: int, phase: str) -> Job | None:
    """Record progress; the returned record says whether a cancel was asked for (None: the job ended elsewhere)."""
    job = rt.store.progress(job_id, **_progress_fields(manifest, resumed, phase))
    if job is None:
        log.info("job %s: ended elsewhere while running; stopping", job_id)
    return job


def _settings(request: NarrationRequest, rt: Runtime) -> dict[str, Any]:
    return {"speaker_id": request.speaker_id, "temperature": request.temperature, "top_k": request.top_k,
            "output_format": request.output_format, "max_chunk_chars": rt.settings.max_chunk_chars,
            "sentence_pause_s": SENTENCE_PAUSE_S, "paragraph_pause_s": PARAGRAPH_PAUSE_S, "target_lufs": TARGET_LUFS}


def _voice_prompt(rt: Runtime, request: NarrationRequest) -> tuple[Any, int]:
    key = rt.storage.key_for(keys.VOICES_FOLDER, f"{request.voice_prompt_sha256}.wav")
    data = rt.storage.get_bytes(key)
    if data is None:
        raise StorageError(f"the voice prompt {rt.storage.url_for(key)} is missing")
    return decode_wav(data)
