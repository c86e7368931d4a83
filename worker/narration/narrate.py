"""One job's narration, queue-free: plan chunks -> synthesize (resume-aware, cancel-aware) -> stitch -> deliver."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from producer.audio_formats import audio_format
from producer.errors import StorageError
from producer.lexicon import lexicon_sha256
from producer.mastering import PARAGRAPH_PAUSE_S, SENTENCE_PAUSE_S, TARGET_LUFS
from producer.request import NarrationRequest
from producer.storage import Storage
from producer.voice import voice_prompt_key
from worker.models import SpeechModel
from worker.narration.audio import decode_wav
from worker.narration.delivery import deliver
from worker.narration.frame_publish import FramePublisher
from worker.narration.manifest import Manifest
from worker.narration.stitch import stitch
from worker.narration.synthesis import Attempt, ChunkSynthesizer
from worker.narration.text import Chunk, chunk_text, first_chunk_guess

__all__ = ["NarrationOutcome", "ProgressHook", "Verdict", "narrate", "voice_prompt"]

log = logging.getLogger(__name__)

# Plans texts while their first chunk generates: one thread a process (plans are pure Python; they take turns).
_PLANNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="echoforge-planner")

# The progress hook's answer after every chunk: go on, cancel (the job's chunks are deleted), stop (the job ended
# elsewhere: leave everything as it is) or drain (the worker is stopping: store the rows in flight, start no new
# chunk, and end as "drain" unless every chunk is then stored). It may also raise (e.g. NarrationTimeoutError).
Verdict = Literal["go", "cancel", "stop", "drain"]
ProgressHook = Callable[[dict[str, Any]], Verdict]


@dataclass(frozen=True)
class NarrationOutcome:
    """How narrate ended: "done" with the job's result and final progress, or the hook's "cancel" / "stop", or
    "drain" with the progress of the chunks stored."""

    verdict: Literal["done", "cancel", "stop", "drain"]
    result: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None


def narrate(job_id: str, request: NarrationRequest, model: SpeechModel, storage: Storage,
            max_chunk_chars: int, model_info: dict[str, Any], on_progress: ProgressHook,
            first_chunk_chars: int = 0, frames: FramePublisher | None = None) -> NarrationOutcome:
    """The job's work: its result when done, or the hook's "cancel" / "stop" that ended it early.

    Chunks already in the stored manifest are skipped; a canceled job's chunks and manifest are deleted.
    `first_chunk_chars` (0: off) keeps the first chunk short, so the first audio comes soon; `frames` publishes the
    first chunk frame by frame as it is generated (a frame-streaming job's; the caller closes it).
    """
    settings = _settings(request, max_chunk_chars, first_chunk_chars)
    with tempfile.TemporaryDirectory(prefix=f"echoforge-{job_id[:8]}-") as tmp:
        spool = Path(tmp)
        synthesizer = ChunkSynthesizer(model, request, job_id, spool)
        synthesizer.frames = frames
        stored = Manifest.stored(storage, job_id)
        plan, early = _plan_while_first_chunk_generates(synthesizer, stored is None, max_chunk_chars,
                                                        first_chunk_chars)
        synthesizer.manifest = manifest = Manifest.open(storage, job_id, request, model_info, settings, len(plan),
                                                        stored)
        resumed = len(manifest.chunks)
        log.info("job %s: %d chunks, %d already stored", job_id, len(plan), resumed)
        if request.voice_prompt_sha256:
            synthesizer.load_voice_prompt(*voice_prompt(storage, request.voice_prompt_sha256))
        for chunk in _stored_in_order(plan, manifest, synthesizer, early):
            phase = "stitching" if chunk.index == len(plan) - 1 else "synthesizing"
            verdict = on_progress(_progress(manifest, resumed, phase))
            if verdict == "drain":
                synthesizer.stop_starting()
            elif verdict != "go":
                if verdict == "cancel":
                    manifest.discard()
                return NarrationOutcome(verdict)
        if len(manifest.chunks) < len(plan):  # drained: the next worker resumes from the chunks stored
            return NarrationOutcome("drain", progress=_progress(manifest, resumed, "synthesizing"))
        narration = spool / f"narration.{audio_format(request.output_format).extension}"
        log.info("job %s: stitching %d chunks", job_id, len(plan))
        stitch(manifest, spool, narration, request.output_format)
        log.info("job %s: uploading the narration, its captions and manifest", job_id)
        result = deliver(manifest, narration, request.output_format)
        return NarrationOutcome("done", result, _progress(manifest, resumed, "done"))


def _plan_while_first_chunk_generates(synthesizer: ChunkSynthesizer, fresh: bool, max_chunk_chars: int,
                                      first_chunk_chars: int) -> tuple[list[Chunk], list[Attempt] | None]:
    """The job's chunk plan, and the first chunk's generation when it could start before the plan was done.

    Planning a long text takes a while (9 KB: 125-200 ms, mostly sentence splitting), so a `fresh` job (nothing
    stored yet) without a voice prompt guesses its first chunk from the text's opening, plans the rest on another
    thread meanwhile, and keeps that generation only if the plan's first chunk is the one guessed.
    """
    request, job_id = synthesizer.request, synthesizer.job_id
    planning = _PLANNER.submit(chunk_text, request.text, max_chunk_chars, first_chunk_chars, lexicon=request.lexicon)
    guess = None
    if not request.voice_prompt_sha256 and fresh:
        guess = first_chunk_guess(request.text, max_chunk_chars, first_chunk_chars, lexicon=request.lexicon)
    if guess is not None and synthesizer.frames is not None:  # its frames go out only once the plan keeps it
        frames = synthesizer.frames
        frames.hold()
        planning.add_done_callback(lambda done: frames.settle(done.exception() is None and
                                                              done.result()[:1] == [guess]))
    early = synthesizer.generate([guess])[0] if guess is not None else None
    plan = planning.result()
    if early is not None and plan[:1] != [guess]:
        log.info("job %s: the first chunk guessed from the opening is not the plan's; generating it again", job_id)
        early = None
    return plan, early


def _stored_in_order(plan: list[Chunk], manifest: Manifest, synthesizer: ChunkSynthesizer,
                     early: list[Attempt] | None = None) -> Iterator[Chunk]:
    """Each chunk of the plan in order, once stored (skipped when the manifest has it). Without a voice prompt the
    first chunk is generated alone, as it becomes the anchor (the shared context) of every later chunk; `early` is
    its generation when already done. The missing chunks then flow through the model as one stream: as a row ends,
    its slot takes the next missing chunk. Draining, no new chunk starts and the chunks left are not yielded."""
    rest = plan
    if synthesizer.anchor is None and plan:
        first, rest = plan[0], plan[1:]
        if not manifest.done(first.index):
            if synthesizer.draining:
                return
            list(synthesizer.store([first], [early]) if early is not None else synthesizer.synthesize([first]))
        synthesizer.adopt_first_chunk(first)
        yield first
    missing = [chunk for chunk in rest if not manifest.done(chunk.index)]
    to_store = {chunk.index for chunk in missing}
    entries = synthesizer.synthesize(missing)  # in the chunks' order
    try:
        for chunk in rest:
            if chunk.index in to_store and next(entries, None) is None:
                return  # drained: the chunks from here were never started
            yield chunk
    finally:
        entries.close()  # a cancel: nothing more starts; the rows in flight end unstored


def _progress(manifest: Manifest, resumed: int, phase: str) -> dict[str, Any]:
    return {"chunks_done": len(manifest.chunks), "chunks_total": manifest.data["chunks_total"],
            "chunks_resumed": resumed, "audio_s": manifest.audio_seconds(), "phase": phase}


def _settings(request: NarrationRequest, max_chunk_chars: int, first_chunk_chars: int) -> dict[str, Any]:
    return {"speaker_id": request.speaker_id, "temperature": request.temperature, "top_k": request.top_k,
            "output_format": request.output_format, "max_chunk_chars": max_chunk_chars,
            "first_chunk_chars": first_chunk_chars, "lexicon": request.lexicon,
            "lexicon_sha256": lexicon_sha256(request.lexicon) if request.lexicon else None,
            "sentence_pause_s": SENTENCE_PAUSE_S, "paragraph_pause_s": PARAGRAPH_PAUSE_S, "target_lufs": TARGET_LUFS}


def voice_prompt(storage: Storage, sha256: str) -> tuple[Any, int]:
    key = voice_prompt_key(storage, sha256)
    data = storage.get_bytes(key)
    if data is None:
        raise StorageError(f"the voice prompt {storage.url_for(key)} is missing")
    return decode_wav(data)
