"""The running jobs' texts waiting for batch slots under continuous batching, each job given its fair share.

Each call a job makes is a feed: generate_requests a Feed (its texts not yet started), generate_stream a Stream (a
job's chunks, handed over one start at a time by the job's own refill: its QA retries, then its next chunks). As
slots free, FeedQueue.take starts a text of the job (the requests' `owner`, a Stream itself; else the call) with
the fewest texts running, the one served least recently on a tie (in turn: a job's stream lives as long as the job),
so a job that just arrived gets the next free slot ahead of a long job's backlog, and jobs running together hold
about equal shares.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from worker.models.base import Generated, RowDone, SpeechRequest, TextDone, TextRefill

__all__ = ["Feed", "FeedQueue", "Stream"]

StartTexts = Callable[[SpeechRequest], list[Any]]  # a request -> one model handle per text (SpeechModel.start_texts)


@dataclass(eq=False)
class Feed:
    """One job's requests: texts waiting for a slot, texts running, and the results as they come."""

    requests: list[SpeechRequest]
    on_row: RowDone | None = None  # the job's: hears of each of its texts as it is done
    served: int = 0  # FeedQueue's turn when it last started a text (or arrived)
    result: Future[list[list[Generated]]] = field(default_factory=Future)
    waiting: deque[tuple[int, int]] = field(default_factory=deque)  # (request, text) not started
    handles: list[list[Any]] | None = None  # the model's, once the feed first gets a slot
    running: int = 0
    done: dict[tuple[int, int], Generated] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.waiting.extend((r, i) for r, request in enumerate(self.requests) for i in range(len(request.texts)))

    @property
    def texts(self) -> int:
        return sum(len(r.texts) for r in self.requests)

    @property
    def owner(self) -> object:
        return self.requests[0].owner or self

    def may_start(self) -> bool:
        return bool(self.waiting)

    must_ask = may_start  # whether the generation thread has something to run for it


@dataclass(eq=False)
class Stream:
    """One job's generate_stream call: `refill(1)` hands its next start (none: nothing now, or, with none of its
    texts running, nothing more: the stream ends); at most `size` of its texts run at once."""

    refill: TextRefill
    on_done: TextDone
    size: int
    served: int = 0
    result: Future[None] = field(default_factory=Future)
    running: int = 0

    @property
    def owner(self) -> object:
        return self

    def may_start(self) -> bool:
        return self.running < self.size

    def must_ask(self) -> bool:
        return self.running == 0  # it starts a text or ends when asked


class FeedQueue:
    """The feeds of the running jobs, guarded by `lock` (shared with whoever counts the jobs)."""

    def __init__(self, lock: threading.Condition) -> None:
        self.lock = lock
        self.feeds: list[Feed | Stream] = []
        self._owner: dict[Any, tuple[Feed | Stream, int, int]] = {}  # model handle -> (feed, request, text)
        self.started: list[Feed | Stream] = []  # the feed of each text started since the last reset (for the log)
        self._turns = itertools.count(1)  # stamps Feed.served: who was served least recently wins a tie

    def add(self, feed: Feed | Stream) -> None:
        with self.lock:
            if isinstance(feed, Feed) and feed.texts == 0:
                feed.result.set_result([[] for _ in feed.requests])
                return
            feed.served = next(self._turns)
            self.feeds.append(feed)
            self.lock.notify_all()

    def wait_for_texts(self) -> None:
        with self.lock:
            self.lock.wait_for(lambda: any(f.must_ask() for f in self.feeds))

    def take(self, free: int, start: StartTexts) -> list[Any]:
        """Up to `free` texts to start now, one at a time from the job with the fewest running."""
        handles: list[Any] = []
        dry: set[Feed | Stream] = set()  # streams with nothing to start now
        with self.lock:
            while len(handles) < free and (ready := [f for f in self.feeds if f.may_start() and f not in dry]):
                running = Counter[object]()
                for f in self.feeds:
                    running[f.owner] += f.running
                feed = min(ready, key=lambda f: (running[f.owner], f.served))
                handle, r, i = self._next_of(feed, start) if isinstance(feed, Feed) else self._next_in(feed)
                if handle is None:
                    dry.add(feed)
                    continue
                self._owner[handle] = (feed, r, i)
                feed.running += 1
                feed.served = next(self._turns)
                self.started.append(feed)
                handles.append(handle)
        return handles

    def _next_of(self, feed: Feed, start: StartTexts) -> tuple[Any, int, int]:
        if feed.handles is None and not self._prepare(feed, start):
            return None, 0, 0
        assert feed.handles is not None
        r, i = feed.waiting.popleft()
        return feed.handles[r][i], r, i

    def _next_in(self, stream: Stream) -> tuple[Any, int, int]:
        """The stream's next start; it ends when it has none while none of its texts runs, or when refill fails."""
        try:
            handles = stream.refill(1)
        except Exception as e:
            self._end(stream, e)
            return None, 0, 0
        if not handles and not stream.running:
            self._end(stream, None)
        return (handles[0] if handles else None), 0, 0

    def _prepare(self, feed: Feed, start: StartTexts) -> bool:
        """The model's handles for every text of the feed; a request it refuses fails its job alone."""
        try:
            feed.handles = [start(request) for request in feed.requests]
        except Exception as e:
            self._end(feed, e)
            return False
        return True

    def done(self, handle: Any, result: Generated) -> None:
        """A text has been spoken: its job hears of it, and of all its results once it has them."""
        with self.lock:
            feed, r, i = self._owner.pop(handle)
            feed.running -= 1
        if isinstance(feed, Stream):
            feed.on_done(handle, result)
            return
        with self.lock:
            feed.done[r, i] = result
        if feed.on_row is not None:
            feed.on_row(r, i, result)
        if len(feed.done) == feed.texts:
            with self.lock:
                self.feeds.remove(feed)
            feed.result.set_result([[feed.done[r, i] for i in range(len(request.texts))]
                                    for r, request in enumerate(feed.requests)])

    def fail_running(self, error: BaseException) -> None:
        """The model failed mid-run: the jobs with texts in flight fail, the others keep waiting."""
        with self.lock:
            for feed in {feed for feed, _, _ in self._owner.values()}:
                self._end(feed, error)
            self._owner.clear()

    def fail_all(self, error: BaseException) -> None:
        with self.lock:
            for feed in list(self.feeds):
                self._end(feed, error)
            self._owner.clear()

    def _end(self, feed: Feed | Stream, error: BaseException | None) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)
        if feed.result.done():
            return
        if error is not None:
            feed.result.set_exception(error)
        else:
            feed.result.set_result(None)  # type: ignore[arg-type]  # only a Stream ends without an error
