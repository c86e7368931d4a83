"""One narration job: plan chunks -> synthesize each (resume-aware, cancel-aware) -> stitch -> deliver -> succeed."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import takewhile
from pathlib import Path
from typing import Any, Literal

from celery.exceptions import SoftTimeLimitExceeded

from producer.errors import StorageError
from producer.jobs import JobState, NarrationRequest
from producer.storage import LocalStorage, S3Storage
from producer.voice import voice_prompt_key
from worker import metrics
from worker.audio import PARAGRAPH_PAUSE_S, SENTENCE_PAUSE_S, TARGET_LUFS, decode_wav
from worker.lock import JobLock
from worker.manifest import Manifest
from worker.models import CSMModelLoadError, SpeechModel
from worker.runtime import Runtime
from worker.stitch import deliver, stitch
from worker.synthesis import ChunkSynthesizer
from worker.text import Chunk, chunk_text

__all__ = ["narrate", "run"]

log = logging.getLogger(__name__)

# Called after every chunk with the progress fields; says whether to go on, cancel (the job's chunks are deleted)
# or stop (the job ended elsewhere: leave everything as it is).
Verdict = Literal["go", "cancel", "stop"]
ProgressHook = Callable[[dict[str, Any]], Verdict]


def run(job_id: str, rt: Runtime, worker: str) -> JobState | None:
    """Run one job to a terminal state under its run lock; None when the job was not (or no longer) runnable.

    Raises JobBusyError when another delivery is running it.
    """
    with JobLock(rt.store, job_id, rt.settings.job_lock_ttl_s):
        return _run_locked(job_id, rt, worker)


def _run_locked(job_id: str, rt: Runtime, worker: str) -> JobState | None:
    job = rt.store.start(job_id, worker=worker, model=rt.model_info, phase="planning")
    if job is None:
        log.info("job %s: not started (already %s)", job_id, rt.store.get(job_id).state.value)
        return None
    if job.attempts > rt.settings.max_attempts:
        rt.store.dead_letter(job_id, f"started {job.attempts} times; each run lost its worker "
                                     f"(limit ECHOFORGE_MAX_ATTEMPTS={rt.settings.max_attempts})")
        log.error("job %s: dead-lettered after %d starts", job_id, job.attempts)
        return JobState.FAILED
    if rt.model is None:
        raise CSMModelLoadError(rt.model_error or "no model loaded in this worker")

    deadline = time.monotonic() + rt.settings.soft_time_limit_s

    def report(progress: dict[str, Any]) -> Verdict:
        if time.monotonic() > deadline:  # Celery's own soft limit does not reach the threads pool
            raise SoftTimeLimitExceeded(f"the job ran past its soft time limit of {rt.settings.soft_time_limit_s} s")
        metrics.observe_progress(job_id, progress)
        current = rt.store.progress(job_id, **progress)
        return "stop" if current is None else "cancel" if current.cancel_requested else "go"

    request = job.narration_request()
    log.info("job %s: attempt %d on %s, %d chars", job_id, job.attempts, worker, len(request.text))
    with rt.model.serving_job():
        done = narrate(job_id, request, rt.model, rt.storage, rt.settings.max_chunk_chars, rt.model_info, report)
    if done == "stop":
        log.info("job %s: ended elsewhere while running; stopped", job_id)
        return None
    if isinstance(done, str):  # "cancel"
        rt.store.finish_canceled(job_id)
        log.info("job %s: canceled; its chunks were deleted", job_id)
        return JobState.CANCELED
    result, progress = done
    rt.store.succeed(job_id, result, request, **progress)
    log.info("job %s: succeeded, %.1f s of audio in %d chunks (%d flagged) at %s", job_id, result["duration_s"],
             result["chunks"], len(result["flagged_chunks"]), result["url"])
    return JobState.SUCCEEDED


def narrate(job_id: str, request: NarrationRequest, model: SpeechModel, storage: LocalStorage | S3Storage,
            max_chunk_chars: int, model_info: dict[str, Any],
            on_progress: ProgressHook) -> tuple[dict[str, Any], dict[str, Any]] | Verdict:
    """The job's work, queue-free: (result, final progress), or the hook's "cancel" / "stop" that ended it early.

    Chunks already in the stored manifest are skipped; a canceled job's chunks and manifest are deleted.
    """
    plan = chunk_text(request.text, max_chunk_chars)
    manifest = Manifest.open(storage, job_id, request, model_info, _settings(request, max_chunk_chars), len(plan))
    resumed = len(manifest.chunks)
    log.info("job %s: %d chunks, %d already stored", job_id, len(plan), resumed)
    with tempfile.TemporaryDirectory(prefix=f"echoforge-{job_id[:8]}-") as tmp:
        spool = Path(tmp)
        synthesizer = ChunkSynthesizer(model, request, manifest, spool)
        if request.voice_prompt_sha256:
            synthesizer.load_voice_prompt(*_voice_prompt(storage, request.voice_prompt_sha256))
        for chunk in _stored_in_order(plan, manifest, synthesizer, model.batch_size):
            phase = "stitching" if chunk.index == len(plan) - 1 else "synthesizing"
            verdict = on_progress(_progress(manifest, resumed, phase))
            if verdict != "go":
                if verdict == "cancel":
                    manifest.discard()
                return verdict
        narration = spool / f"narration.{request.output_format}"
        stitch(manifest, spool, narration, request.output_format)
        return deliver(manifest, narration, request.output_format), _progress(manifest, resumed, "done")


def _stored_in_order(plan: list[Chunk], manifest: Manifest, synthesizer: ChunkSynthesizer,
                     batch_size: int) -> Iterator[Chunk]:
    """Each chunk of the plan in order, once it is stored: skipped when the manifest has it, else generated with the
    next ones still missing, up to `batch_size` at a time. Without a voice prompt the first chunk is generated alone,
    as it becomes the anchor (the shared context) of every later batch."""
    index = 0
    while index < len(plan):
        if manifest.done(plan[index].index):
            stored: Iterable[Chunk] = [plan[index]]
        else:
            size = batch_size if synthesizer.anchor is not None else 1
            group = list(takewhile(lambda c: not manifest.done(c.index), plan[index: index + size]))
            stored = (chunk for chunk, _ in zip(group, synthesizer.synthesize_batch(group), strict=False))
        for chunk in stored:
            if chunk.index == 0:
                synthesizer.adopt_first_chunk(chunk)
            index += 1
            yield chunk


def _progress(manifest: Manifest, resumed: int, phase: str) -> dict[str, Any]:
    return {"chunks_done": len(manifest.chunks), "chunks_total": manifest.data["chunks_total"],
            "chunks_resumed": resumed, "audio_s": manifest.audio_seconds(), "phase": phase}


def _settings(request: NarrationRequest, max_chunk_chars: int) -> dict[str, Any]:
    return {"speaker_id": request.speaker_id, "temperature": request.temperature, "top_k": request.top_k,
            "output_format": request.output_format, "max_chunk_chars": max_chunk_chars,
            "sentence_pause_s": SENTENCE_PAUSE_S, "paragraph_pause_s": PARAGRAPH_PAUSE_S, "target_lufs": TARGET_LUFS}


def _voice_prompt(storage: LocalStorage | S3Storage, sha256: str) -> tuple[Any, int]:
    key = voice_prompt_key(storage, sha256)
    data = storage.get_bytes(key)
    if data is None:
        raise StorageError(f"the voice prompt {storage.url_for(key)} is missing")
    return decode_wav(data)
