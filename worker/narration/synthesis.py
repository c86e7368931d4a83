"""A job's chunks in the anchor's voice: generate, check, retry once on a new seed, store."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from producer import keys
from producer.request import NarrationRequest
from worker.models import SAMPLES_PER_FRAME, Generated, Segment, SpeechModel, SpeechRequest, frame_budget
from worker.models.base import FrameSink
from worker.narration.audio import chunk_qa, decode_wav, wav_bytes
from worker.narration.flow import ChunkFlow
from worker.narration.frame_publish import FramePublisher
from worker.narration.manifest import Manifest
from worker.narration.text import Chunk, positions_needed

__all__ = ["ChunkSynthesizer", "chunk_seed"]

log = logging.getLogger(__name__)

Attempt = tuple[Generated, dict[str, Any]]  # a generated chunk and its QA


def chunk_seed(job_id: str, index: int, attempt: int) -> int:
    """Repeatable per job, chunk and attempt; recorded in the manifest."""
    return int(hashlib.sha256(f"{job_id}:{index}:{attempt}".encode()).hexdigest()[:8], 16)


class ChunkSynthesizer:
    """Generates a job's chunks with one voice anchor: the caller's voice prompt, else the job's first chunk."""

    def __init__(self, model: SpeechModel, request: NarrationRequest, job_id: str, spool: Path) -> None:
        self.model, self.request, self.job_id, self.spool = model, request, job_id, spool
        self.anchor: Segment | None = None
        self._manifest: Manifest | None = None
        self.seed_attempt = 0  # the attempt number of first tries' seeds (a re-render starts past the earlier ones)
        self.draining = False  # set by stop_starting: the chunks in flight finish, no new one starts
        self.frames: FramePublisher | None = None  # a frame-streaming job's: chunk 0's first generation streams

    def stop_starting(self) -> None:
        """The worker is stopping: chunks already started are finished and stored; no other chunk is started."""
        self.draining = True

    @property
    def manifest(self) -> Manifest:
        """Where chunks are recorded; set once the plan is known (a first chunk may be generated before)."""
        if self._manifest is None:
            raise RuntimeError(f"job {self.job_id}: no manifest yet")
        return self._manifest

    @manifest.setter
    def manifest(self, manifest: Manifest) -> None:
        self._manifest = manifest

    def load_voice_prompt(self, audio: np.ndarray, sample_rate: int) -> None:
        assert self.request.voice_text is not None
        self.anchor = Segment(self.request.speaker_id, self.request.voice_text, audio, sample_rate)
        self.manifest.data["voice_anchor"] = {"source": "voice_prompt", "text": self.request.voice_text,
                                              "sha256": self.request.voice_prompt_sha256,
                                              "seconds": round(len(audio) / sample_rate, 3)}

    def adopt_first_chunk(self, chunk: Chunk) -> None:
        """Without a voice prompt the first chunk becomes the anchor (read back from storage on a resume)."""
        if self.anchor is not None:
            return
        audio, rate = decode_wav(self.manifest.read_chunk(chunk.index, self.spool))
        self.anchor = Segment(self.request.speaker_id, chunk.text, audio, rate)
        self.manifest.data["voice_anchor"] = {"source": "first_chunk", "text": chunk.text,
                                              "seconds": round(len(audio) / rate, 3)}

    def synthesize(self, chunks: list[Chunk]) -> Generator[dict[str, Any], None, None]:
        """Generate chunks in the anchor's voice as one stream (worker/narration/flow.py): each chunk is checked and
        stored the moment its row ends and its slot goes to the next chunk (a worker that dies loses only the rows
        in flight); one that fails QA is tried once more at once. Manifest entries are yielded in the chunks' order."""
        return ChunkFlow(self, chunks, self.seed_attempt).stored_in_order()

    def start_row(self, chunk: Chunk, attempt: int) -> Any:
        """The model's handle for one try of `chunk`, logged as it starts (called when its row takes a slot)."""
        [handle] = self.model.start_texts(SpeechRequest(
            [chunk.text], self.request.speaker_id, self.request.temperature, self.request.top_k,
            [self.anchor] if self.anchor is not None else [], [chunk_seed(self.job_id, chunk.index, attempt)],
            owner=self.job_id, on_frame=self._frame_sink(chunk)))
        log.info("job %s: chunk %d started (attempt %d)", self.job_id, chunk.index, attempt + 1)
        return handle

    def _frame_sink(self, chunk: Chunk) -> FrameSink | None:
        """The publisher's sink for chunk 0's first generation (the first row of it to start); None otherwise."""
        if chunk.index != 0 or self.frames is None or not self.frames.claim():
            return None
        return self.frames.sink

    def generate(self, chunks: list[Chunk]) -> list[list[Attempt]]:
        """Each chunk's tries (a second on its next seed when the first fails QA), generated as synthesize does but
        not stored. Each chunk's sampler is seeded with chunk_seed(job, index, attempt) whatever shares its batch."""
        tries = dict(ChunkFlow(self, chunks, self.seed_attempt).as_rows_end())
        return [tries[i] for i in range(len(chunks))]

    def store(self, chunks: list[Chunk], generated: list[list[Attempt]]) -> Iterator[dict[str, Any]]:
        """Store each chunk's last attempt and record it in the manifest, in order, yielding each entry once saved."""
        for chunk, attempts in zip(chunks, generated, strict=True):
            yield self.store_attempts(chunk, attempts)

    def store_attempts(self, chunk: Chunk, attempts: list[Attempt]) -> dict[str, Any]:
        """Store a chunk's last attempt (its WAV, then its manifest entry) and return the entry."""
        for number, (result, qa) in enumerate(attempts, start=1):
            log.info("job %s: chunk %d generated (attempt %d, %.2f s%s)", self.job_id, chunk.index,
                     number, len(result.audio) / result.sample_rate,
                     f", QA: {','.join(qa['problems'])}" if qa["problems"] else "")
        result, qa = attempts[-1]
        if chunk.index == 0 and self.frames is not None:
            self.frames.close()  # its end marker goes before the stored chunk (the API's fallback relies on it)
        seed = chunk_seed(self.job_id, chunk.index, self.seed_attempt + len(attempts) - 1)
        entry = self._entry(chunk, result.audio, result.sample_rate, seed, len(attempts), qa, result.stats)
        self._store(chunk.index, wav_bytes(result.audio, result.sample_rate))
        self.manifest.record(entry)
        return entry

    @staticmethod
    def checked(chunk: Chunk, result: Generated) -> Attempt:
        stats = result.stats
        return result, chunk_qa(result.audio, result.sample_rate, len(chunk.text),
                                hit_frame_cap=bool(stats and stats.frames >= stats.frame_cap))

    def _entry(self, chunk: Chunk, audio: np.ndarray, rate: int, seed: int, attempts: int,
               qa: dict[str, Any], stats: Any) -> dict[str, Any]:
        anchor_frames = round(len(self.anchor.audio) / self.anchor.sample_rate * rate / SAMPLES_PER_FRAME) \
            if self.anchor is not None else 0
        return {
            "index": chunk.index, "text": chunk.text, "display": chunk.display, "chars": len(chunk.text),
            "paragraph_end": chunk.paragraph_end, "seed": seed, "attempts": attempts,
            "duration_s": round(len(audio) / rate, 6), "samples": len(audio), "qa": qa, "flagged": bool(qa["problems"]),
            "context": "anchor" if self.anchor is not None else None,
            "context_audio_frames": stats.context_audio_frames if stats is not None else None,
            "positions_budget": positions_needed(chunk.text, frame_budget(chunk.text),
                                                 self.anchor.text if self.anchor else "", anchor_frames),
            **({"lexicon": list(chunk.lexicon)} if chunk.lexicon else {}),
        }

    def _store(self, index: int, data: bytes) -> None:
        path = self.spool / keys.CHUNK_OBJECT.format(index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if self.manifest.persist_chunks:
            self.manifest.storage.put_bytes(self.manifest.chunk_key(index), data, "audio/wav")
