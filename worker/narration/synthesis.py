"""A job's chunks a batch at a time: generate in the anchor's voice, check, retry once on a new seed, store in order."""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from producer import keys
from producer.request import NarrationRequest
from worker.models import SAMPLES_PER_FRAME, Generated, Segment, SpeechModel, frame_budget
from worker.models.base import FrameSink
from worker.narration.audio import chunk_qa, decode_wav, wav_bytes
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

    def synthesize_batch(self, chunks: list[Chunk]) -> Iterator[dict[str, Any]]:
        """Generate chunks together in the anchor's voice; each chunk is checked and stored the moment its row ends,
        while the others go on (so a worker that dies loses only the rows still in flight); one that fails QA is
        stored after its one more try. Manifest entries are yielded in the chunks' order."""
        stored: dict[int, dict[str, Any]] = {}
        done = 0
        for i, attempts in self._as_rows_end(chunks, self.seed_attempt):
            stored[i] = self._store_attempts(chunks[i], attempts)
            while done in stored:
                yield stored[done]
                done += 1
        yield from (stored[i] for i in range(done, len(chunks)))

    def _as_rows_end(self, chunks: list[Chunk], attempt: int) -> Iterator[tuple[int, list[Attempt]]]:
        """(chunk position, its checked attempts) as each chunk's last row ends. The batch runs on another thread; a
        chunk that fails QA is tried once more: at once, joining the running batch, on a model that takes concurrent
        requests (a worker's shared model), else after the batch. Leaving early (a cancel) waits for the threads, so
        the model never runs two batches at once."""
        ended: queue.Queue[tuple[int, Generated | None, int]] = queue.Queue()  # (chunk, result, attempt); None: end
        failure: list[BaseException] = []
        threads: list[threading.Thread] = []

        def generate(positions: list[int], number: int) -> None:
            try:
                self._generate([chunks[i] for i in positions], number,
                               lambda i, result: ended.put((positions[i], result, number)))
            except BaseException as e:  # handed to the job's thread
                failure.append(e)
            finally:
                ended.put((-1, None, number))

        def start(positions: list[int], number: int) -> None:
            threads.append(threading.Thread(target=generate, args=(positions, number), daemon=True,
                                            name=f"echoforge-batch-{self.job_id[:8]}"))
            threads[-1].start()

        start(list(range(len(chunks))), attempt)
        try:
            yield from self._collect(chunks, attempt, ended, start)
        finally:
            for thread in threads:
                thread.join()
        if failure:
            raise failure[0]

    def _collect(self, chunks: list[Chunk], attempt: int, ended: queue.Queue[tuple[int, Generated | None, int]],
                 start: Callable[[list[int], int], None]) -> Iterator[tuple[int, list[Attempt]]]:
        firsts: dict[int, Attempt] = {}
        finished: set[int] = set()
        held: list[int] = []  # failed QA, to be tried again after the batch
        running = 1  # generation threads that have not ended
        while running:
            i, result, number = ended.get()
            if result is None:
                running -= 1
                if not running and held:
                    start(held, attempt + 1)
                    running, held = 1, []
            elif number == attempt and i not in firsts:  # a shared batch that failed is run again: rows may come twice
                firsts[i] = self._checked(chunks[i], result)
                if not firsts[i][1]["problems"]:
                    yield i, [firsts[i]]
                elif self.model.takes_concurrent_requests:
                    start([i], attempt + 1)
                    running += 1
                else:
                    held.append(i)
            elif number == attempt + 1 and i in firsts and i not in finished:
                finished.add(i)
                yield i, [firsts[i], self._checked(chunks[i], result)]

    def generate(self, chunks: list[Chunk]) -> list[list[Attempt]]:
        """Each chunk's attempts: one batch for all, then one more try on its next seed for each that fails QA.

        Each chunk's sampler is seeded with chunk_seed(job, index, attempt) whatever else shares its batch.
        """
        first = self._attempt(chunks, self.seed_attempt)
        failed = [i for i, (_, qa) in enumerate(first) if qa["problems"]]
        retried = dict(zip(failed, self._attempt([chunks[i] for i in failed], self.seed_attempt + 1),
                           strict=True)) if failed else {}
        return [[first[i], *([retried[i]] if i in retried else [])] for i in range(len(chunks))]

    def store(self, chunks: list[Chunk], generated: list[list[Attempt]]) -> Iterator[dict[str, Any]]:
        """Store each chunk's last attempt and record it in the manifest, in order, yielding each entry once saved."""
        for chunk, attempts in zip(chunks, generated, strict=True):
            yield self._store_attempts(chunk, attempts)

    def _store_attempts(self, chunk: Chunk, attempts: list[Attempt]) -> dict[str, Any]:
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

    def _attempt(self, chunks: list[Chunk], attempt: int) -> list[Attempt]:
        """One generation of every chunk (one batch), each checked by QA."""
        return [self._checked(c, r) for c, r in zip(chunks, self._generate(chunks, attempt), strict=True)]

    def _generate(self, chunks: list[Chunk], attempt: int,
                  on_done: Callable[[int, Generated], None] | None = None) -> list[Generated]:
        """One batch: every chunk's generation is logged as it starts; `on_done` hears of each as its row ends."""
        for chunk in chunks:
            log.info("job %s: chunk %d started (attempt %d)", self.job_id, chunk.index, attempt + 1)
        started = time.perf_counter()
        results = self.model.generate_batch(
            [c.text for c in chunks], speaker_id=self.request.speaker_id, temperature=self.request.temperature,
            top_k=self.request.top_k, context=[self.anchor] if self.anchor is not None else [],
            seeds=[chunk_seed(self.job_id, c.index, attempt) for c in chunks], on_done=on_done, owner=self.job_id,
            on_frame=self._frame_sink(chunks))
        log.info("job %s: %d chunks (attempt %d) generated together in %.2f s, %.2f s of audio", self.job_id,
                 len(chunks), attempt + 1, time.perf_counter() - started,
                 sum(len(r.audio) / r.sample_rate for r in results))
        return results

    def _frame_sink(self, chunks: list[Chunk]) -> FrameSink | None:
        """The publisher's sink for chunk 0's first generation when this batch has it; None otherwise."""
        first = next((i for i, c in enumerate(chunks) if c.index == 0), None)
        if first is None or self.frames is None or not self.frames.claim():
            return None
        sink = self.frames.sink
        return lambda i, codes: sink(i, codes) if i == first else None

    @staticmethod
    def _checked(chunk: Chunk, result: Generated) -> Attempt:
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
