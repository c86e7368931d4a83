"""A job's chunks through the model as one stream: as a row ends, its slot takes the job's next start (a QA retry
first, then the next missing chunk), so the job never waits for its longest row; each chunk is stored as it ends."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from worker.models import Generated
from worker.narration.text import Chunk

if TYPE_CHECKING:
    from worker.narration.synthesis import Attempt, ChunkSynthesizer

__all__ = ["ChunkFlow"]

log = logging.getLogger(__name__)

_Ended = tuple[int, list["Attempt"]] | BaseException | None  # (chunk position, attempts); an error; None: the end


class ChunkFlow:
    """`chunks` (first tries on seed attempt `attempt`) fed to `synthesizer.model.generate_stream`, which runs on
    its own thread and calls `refill` / `ended` there; the job's thread stores what ended and yields in order."""

    def __init__(self, synthesizer: ChunkSynthesizer, chunks: list[Chunk], attempt: int) -> None:
        self.synthesizer, self.chunks, self.attempt = synthesizer, chunks, attempt
        self._waiting: deque[tuple[int, int]] = deque((i, attempt) for i in range(len(chunks)))  # (position, try)
        self._running: dict[Any, tuple[int, int]] = {}  # model handle -> (position, try)
        self._firsts: dict[int, Attempt] = {}  # first tries that failed QA, until their retry ends
        self._ended: queue.Queue[_Ended] = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False  # the job left (cancel, failure): nothing more starts, not even a retry
        self._tries, self._audio_s = 0, 0.0  # rows ended, and their audio (for the log)

    def stored_in_order(self) -> Generator[dict[str, Any], None, None]:
        """Each chunk's manifest entry, in the chunks' order, once stored; chunks are stored as their rows end (in
        any order). Ends early when the synthesizer drains (the chunks after the first never started are left)."""
        stored: dict[int, dict[str, Any]] = {}
        next_position = 0
        rows = self.as_rows_end()
        try:
            for position, attempts in rows:
                stored[position] = self.synthesizer.store_attempts(self.chunks[position], attempts)
                while next_position in stored:
                    yield stored.pop(next_position)
                    next_position += 1
        finally:
            rows.close()

    def as_rows_end(self) -> Generator[tuple[int, list[Attempt]], None, None]:
        """(chunk position, its checked tries) as each chunk's last row ends. Leaving early (a cancel) starts nothing
        more and, on a model that is the job's alone, waits for the rows in flight, so it never runs two streams."""
        if not self.chunks:
            return
        thread = threading.Thread(target=self._generate, daemon=True,
                                  name=f"echoforge-flow-{self.synthesizer.job_id[:8]}")
        thread.start()
        try:
            for _ in self.chunks:
                if (item := self._ended.get()) is None:
                    return  # drained
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._lock:
                self._closed = True
            if not self.synthesizer.model.takes_concurrent_requests:
                thread.join()

    def _generate(self) -> None:
        model, started = self.synthesizer.model, time.perf_counter()
        try:
            model.generate_stream(self.refill, self.ended, model.batch_size)
        except BaseException as e:  # handed to the job's thread
            self._ended.put(e)
        log.info("job %s: %d chunks (%d tries) generated in %.2f s, %.2f s of audio", self.synthesizer.job_id,
                 len(self.chunks), self._tries, time.perf_counter() - started, self._audio_s)
        self._ended.put(None)

    def refill(self, free: int) -> list[Any]:
        """Up to `free` starts now: retries first (they finish chunks already begun, so a drain still runs them),
        then the next chunks while the synthesizer is not draining."""
        handles: list[Any] = []
        with self._lock:
            while len(handles) < free and self._waiting and not self._closed:
                position, attempt = self._waiting[0]
                if attempt == self.attempt and self.synthesizer.draining:
                    break
                self._waiting.popleft()
                handle = self.synthesizer.start_row(self.chunks[position], attempt)
                self._running[handle] = (position, attempt)
                handles.append(handle)
        return handles

    def ended(self, handle: Any, result: Generated) -> None:
        """A row ended (on the model's thread): checked at once, so a retry is waiting before the next refill."""
        with self._lock:
            position, attempt = self._running.pop(handle)
            self._tries += 1
            self._audio_s += len(result.audio) / result.sample_rate
        log.debug("job %s: chunk %d ended (attempt %d)", self.synthesizer.job_id, self.chunks[position].index,
                  attempt - self.attempt + 1)
        checked = self.synthesizer.checked(self.chunks[position], result)
        if attempt > self.attempt:
            self._ended.put((position, [self._firsts.pop(position), checked]))
        elif checked[1]["problems"]:
            self._firsts[position] = checked
            with self._lock:
                self._waiting.appendleft((position, attempt + 1))
        else:
            self._ended.put((position, [checked]))
