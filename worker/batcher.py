"""Cross-job batching: the jobs one worker process runs at once (threads pool) share its model and its batches.

Each job's pipeline calls generate_batch as usual, from its own thread; BatchingModel hands the request to one
generation thread. Should that thread itself die, every waiting and later request fails at once.

Continuous (ECHOFORGE_CONTINUOUS_BATCHING, the default): the generation thread runs the model for as long as any job
has texts waiting, up to `batch_size` at once; as a text ends, its job hears of it and its slot goes to the next
waiting text of the job with the fewest running (worker/feeds.py), so a one-sentence job starts at the next free slot
instead of waiting behind a chapter's batch. A job's chunks come as one stream (generate_stream): its QA retries and
next chunks wait in the job's own queue and are handed over one start at a time. A request the model refuses fails
only its job; a failure mid-run fails the jobs with texts in flight.

Static: the thread decodes the requests of every job waiting at that moment in one engine call (up to `batch_size`
texts, the first request always whole), and each job waits for its whole batch. Like a dynamic batcher's queue
delay, a batch that is not full waits for the other running jobs at most `wait_s` after its oldest request arrived,
and not at all once every running job is waiting. A request that fails inside a shared batch is run again on its
own, so one job's bad input fails only that job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from worker.feeds import Feed, FeedQueue, Stream
from worker.models import CSMModelError, Generated, SpeechModel, SpeechRequest
from worker.models.base import RowDone, TextDone, TextRefill, split_by

__all__ = ["BatchingModel"]

log = logging.getLogger(__name__)


@dataclass
class _Waiting:
    requests: list[SpeechRequest]
    on_row: RowDone | None = None  # the job's: hears of each of its texts as it is done
    arrived: float = field(default_factory=time.monotonic)
    result: Future[list[list[Generated]]] = field(default_factory=Future)

    @property
    def texts(self) -> int:
        return sum(len(r.texts) for r in self.requests)


class BatchingModel(SpeechModel):
    """`model` behind one generation thread that batches the requests of concurrent jobs together."""

    takes_concurrent_requests = True

    def __init__(self, model: SpeechModel, wait_s: float, continuous: bool = False) -> None:
        self.inner, self.wait_s, self.continuous = model, wait_s, continuous
        self.kind, self.model_id, self.revision = model.kind, model.model_id, model.revision
        self.device, self.batch_size, self.fallback_reason = model.device, model.batch_size, model.fallback_reason
        self._queue: deque[_Waiting] = deque()
        self._ready = threading.Condition()
        self._jobs = 0  # jobs holding serving_job()
        self._broken: str | None = None
        self._feeds = FeedQueue(self._ready)
        threading.Thread(target=self._serve, name="echoforge-batcher", daemon=True).start()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    @contextmanager
    def serving_job(self) -> Iterator[None]:
        with self._ready:
            self._jobs += 1
        try:
            yield
        finally:
            with self._ready:
                self._jobs -= 1
                self._ready.notify_all()

    def generate_requests(self, requests: list[SpeechRequest], on_row: RowDone | None = None) -> list[list[Generated]]:
        """Blocks this job's thread until the batch its requests joined has been decoded; `on_row` is called (from
        the generation thread) as each of this job's texts is done."""
        waiting = Feed(list(requests), on_row) if self.continuous else _Waiting(list(requests), on_row)
        with self._ready:
            if self._broken is not None:
                raise CSMModelError(f"this worker's generation thread stopped: {self._broken}")
            if isinstance(waiting, Feed):
                self._feeds.add(waiting)
            else:
                self._queue.append(waiting)
                self._ready.notify_all()
        return waiting.result.result()

    def start_texts(self, request: SpeechRequest) -> list[Any]:
        """Continuous: the inner model's handles (the generation thread runs them); static: requests to batch."""
        return self.inner.start_texts(request) if self.continuous else super().start_texts(request)

    def generate_stream(self, refill: TextRefill, on_done: TextDone, size: int) -> None:
        """Continuous: the job's texts join the shared run as slots free, its fair share against the other jobs';
        static: `size` at a time, each a shared batch (generate_requests)."""
        if not self.continuous:
            super().generate_stream(refill, on_done, size)
            return
        stream = Stream(refill, on_done, size)
        with self._ready:
            if self._broken is not None:
                raise CSMModelError(f"this worker's generation thread stopped: {self._broken}")
            self._feeds.add(stream)
        stream.result.result()

    def cleanup(self) -> None:
        self.inner.cleanup()

    def streaming_codec(self) -> Any:
        return self.inner.streaming_codec()

    def _serve(self) -> None:
        try:
            while self.continuous:
                self._run_continuously()
            while True:
                batch = self._next_batch()
                started = time.perf_counter()
                self._run(batch)
                log.info("generated %d texts of %d jobs together in %.2f s", sum(w.texts for w in batch), len(batch),
                         time.perf_counter() - started)
        except BaseException as e:  # never leave a job thread waiting for a batch that will not come
            log.exception("the generation thread stopped; jobs on this worker will fail")
            with self._ready:
                self._broken = f"{type(e).__name__}: {e}"
                while self._queue:
                    self._queue.popleft().result.set_exception(CSMModelError(self._broken))
            self._feeds.fail_all(CSMModelError(self._broken))

    def _run_continuously(self) -> None:
        """One model run, for as long as any job has texts waiting."""
        self._feeds.wait_for_texts()
        self._feeds.started.clear()
        started = time.perf_counter()
        try:
            self.inner.generate_stream(lambda free: self._feeds.take(free, self.inner.start_texts), self._feeds.done,
                                       self.batch_size)
        except Exception as e:
            log.warning("a shared run failed (%s); the jobs with texts in it fail", e)
            self._feeds.fail_running(e)
        log.info("generated %d texts of %d jobs together in %.2f s, continuously", len(self._feeds.started),
                 len({feed.owner for feed in self._feeds.started}), time.perf_counter() - started)

    def _next_batch(self) -> list[_Waiting]:
        """The waiting requests, oldest first, up to batch_size texts (the first whole), once full or waited for."""
        with self._ready:
            self._ready.wait_for(lambda: bool(self._queue))
            deadline = self._queue[0].arrived + self.wait_s
            while (sum(w.texts for w in self._queue) < self.batch_size and len(self._queue) < self._jobs
                   and (left := deadline - time.monotonic()) > 0):
                self._ready.wait(left)
            batch = [self._queue.popleft()]
            texts = batch[0].texts
            while self._queue and texts + self._queue[0].texts <= self.batch_size:
                texts += self._queue[0].texts
                batch.append(self._queue.popleft())
            return batch

    def _run(self, batch: list[_Waiting]) -> None:
        owners = [(waiting, r) for waiting in batch for r in range(len(waiting.requests))]

        def row_done(request: int, text: int, result: Generated) -> None:
            waiting, r = owners[request]
            if waiting.on_row is not None:
                waiting.on_row(r, text, result)

        try:
            results = self.inner.generate_requests([r for w in batch for r in w.requests], row_done)
        except Exception as e:
            if len(batch) == 1:
                batch[0].result.set_exception(e)
                return
            log.warning("a batch of %d jobs failed (%s); running each job's requests alone", len(batch), e)
            for waiting in batch:
                self._run([waiting])
            return
        for waiting, group in zip(batch, split_by(results, [len(w.requests) for w in batch]), strict=True):
            waiting.result.set_result(group)
