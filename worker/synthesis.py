"""One chunk at a time: generate in the anchor's voice, check it, retry once on a new seed, store it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from producer import keys
from producer.jobs import NarrationRequest
from worker.audio import chunk_qa, decode_wav, trim_trailing_silence, wav_bytes
from worker.manifest import Manifest
from worker.models import Segment, SpeechModel
from worker.models.csm_model import SAMPLES_PER_FRAME, frame_budget
from worker.text import Chunk, positions_needed

__all__ = ["ChunkSynthesizer", "chunk_seed"]

log = logging.getLogger(__name__)


def chunk_seed(job_id: str, index: int, attempt: int) -> int:
    """Repeatable per job, chunk and attempt; recorded in the manifest."""
    return int(hashlib.sha256(f"{job_id}:{index}:{attempt}".encode()).hexdigest()[:8], 16)


class ChunkSynthesizer:
    """Generates a job's chunks with one voice anchor: the caller's voice prompt, else the job's first chunk."""

    def __init__(self, model: SpeechModel, request: NarrationRequest, manifest: Manifest, spool: Path) -> None:
        self.model, self.request, self.manifest, self.spool = model, request, manifest, spool
        self.anchor: Segment | None = None

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

    def synthesize(self, chunk: Chunk) -> dict[str, Any]:
        """Generate, check and store one chunk; returns its manifest entry (already saved)."""
        context = [self.anchor] if self.anchor is not None else []
        for attempt in range(2):
            seed = chunk_seed(self.manifest.job_id, chunk.index, attempt)
            audio, rate = self.model.generate_speech(
                chunk.text, speaker_id=self.request.speaker_id, temperature=self.request.temperature,
                top_k=self.request.top_k, context=context, seed=seed)
            audio = trim_trailing_silence(audio, rate)  # CSMModel trims too; any model's output gets it here
            stats = self.model.last_generation
            qa = chunk_qa(audio, rate, len(chunk.text), hit_frame_cap=bool(stats and stats.frames >= stats.frame_cap))
            log.info("job %s: chunk %d generated (attempt %d, %.2f s%s)", self.manifest.job_id, chunk.index,
                     attempt + 1, len(audio) / rate, f", QA: {','.join(qa['problems'])}" if qa["problems"] else "")
            if not qa["problems"]:
                break
        entry = self._entry(chunk, audio, rate, seed, attempt + 1, qa, stats)
        self._store(chunk.index, wav_bytes(audio, rate))
        self.manifest.record(entry)
        return entry

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
        }

    def _store(self, index: int, data: bytes) -> None:
        path = self.spool / keys.CHUNK_OBJECT.format(index=index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if self.manifest.persist_chunks:
            self.manifest.storage.put_bytes(self.manifest.chunk_key(index), data, "audio/wav")
