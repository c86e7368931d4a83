"""The running jobs' texts waiting for batch slots under continuous batching, each job given its fair share.

Each call a job makes (generate_requests) is a Feed: its texts not yet started and how many are running. As slots
free, FeedQueue.take starts a waiting text of the job (the requests' `owner`; else the call) with the fewest texts
running, the earliest call on a tie, so a job that just arrived gets the next free slot ahead of a long job's
backlog (its QA retries included), and jobs running together hold about equal shares.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from worker.models.base import Generated, RowDone, SpeechRequest

__all__ = ["Feed", "FeedQueue"]

StartTexts = Callable[[SpeechRequest], list[Any]]  # a request -> one model handle per text (SpeechModel.start_texts)


@dataclass(eq=False)
class Feed:
    """One job's requests: texts waiting for a slot, texts running, and the results as they come."""

    requests: list[SpeechRequest]
    on_row: RowDone | None = None  # the job's: hears of each of its texts as it is done
    arrived: float = field(default_factory=time.monotonic)
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


class FeedQueue:
    """The feeds of the running jobs, guarded by `lock` (shared with whoever counts the jobs)."""

    def __init__(self, lock: threading.Condition) -> None:
        self.lock = lock
        self.feeds: list[Feed] = []
        self._owner: dict[Any, tuple[Feed, int, int]] = {}  # model handle -> (feed, request, text)
        self.started: list[Feed] = []  # the feed of each text started since the last reset (for the log)

    def add(self, feed: Feed) -> None:
        with self.lock:
            if feed.texts == 0:
                feed.result.set_result([[] for _ in feed.requests])
                return
            self.feeds.append(feed)
            self.lock.notify_all()

    def wait_for_texts(self) -> None:
        with self.lock:
            self.lock.wait_for(lambda: any(f.waiting for f in self.feeds))

    def take(self, free: int, start: StartTexts) -> list[Any]:
        """Up to `free` texts to start now, one at a time from the job with the fewest running."""
        handles: list[Any] = []
        with self.lock:
            while len(handles) < free and (ready := [f for f in self.feeds if f.waiting]):
                running = Counter[object]()
                for f in self.feeds:
                    running[f.owner] += f.running
                feed = min(ready, key=lambda f: (running[f.owner], f.arrived))
                if feed.handles is None and not self._prepare(feed, start):
                    continue
                assert feed.handles is not None
                r, i = feed.waiting.popleft()
                handle = feed.handles[r][i]
                self._owner[handle] = (feed, r, i)
                feed.running += 1
                self.started.append(feed)
                handles.append(handle)
        return handles

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

    def _end(self, feed: Feed, error: BaseException) -> None:
        if feed in self.feeds:
            self.feeds.remove(feed)
        if not feed.result.done():
            feed.result.set_exception(error)
