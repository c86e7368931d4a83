"""BookStore: the only door to book records in Redis (a book's parts are ordinary jobs in the JobStore)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from producer import keys
from producer.books.record import Book
from producer.errors import JobNotFoundError
from producer.states import JobState
from producer.store import dumps, is_job_id, lua_script, text

__all__ = ["BookStore"]

FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


class BookStore:
    """Reads and writes book records. A book's state is stored only once final (succeeded, failed by its assembly,
    canceled); before that it is read from its parts (producer/books/record.py)."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._finish = client.register_script(lua_script("finish_book"))

    def create(self, title: str, author: str | None, options: dict[str, Any], chapters: list[dict[str, Any]],
               tenant: str | None = None) -> Book:
        book_id, now = uuid.uuid4().hex, time.time()
        fields = {"id": book_id, "created_at": repr(now), "title": title, "author": author or "",
                  "options": dumps(options), "chapters": dumps(chapters), "tenant": tenant or ""}
        pipe = self.redis.pipeline()
        pipe.hset(keys.book_key(book_id), mapping=fields)
        pipe.zadd(keys.BOOK_INDEX_KEY, {book_id: now})
        pipe.execute()
        return Book.from_hash(fields)

    def get(self, book_id: str, tenant: str | None = None) -> Book:
        """The book; with `tenant`, only that tenant's (another tenant's book is "not found", like a missing one)."""
        data: Any = self.redis.hgetall(keys.book_key(book_id)) if is_job_id(book_id) else {}
        if not data or (tenant is not None and text(data.get(b"tenant", b"")) != tenant):
            raise JobNotFoundError(f"no book {book_id!r}")
        return Book.from_hash({text(k): text(v) for k, v in data.items()})

    def exists(self, book_id: str) -> bool:
        return is_job_id(book_id) and bool(self.redis.exists(keys.book_key(book_id)))

    def set_part_job(self, book_id: str, part: str, job_id: str) -> None:
        self.redis.hset(keys.book_key(book_id), f"job:{part}", job_id)

    def set_fields(self, book_id: str, **fields: Any) -> None:
        self.redis.hset(keys.book_key(book_id), mapping=_encoded(fields))

    def finish(self, book_id: str, state: JobState, **fields: Any) -> bool:
        """Record the book's final state with its fields, atomically and once: False when it already had one."""
        assert state in FINAL_STATES
        pairs = [item for pair in _encoded({"finished_at": repr(time.time()), **fields}).items() for item in pair]
        return bool(self._finish(keys=[keys.book_key(book_id)], args=[state.value, *pairs]))

    def reopen(self, book_id: str) -> None:
        """A retried book: its failed end is forgotten (its parts' own histories keep theirs)."""
        self.redis.hdel(keys.book_key(book_id), "state", "error", "finished_at")

    def part_finished(self, book_id: str, part: str) -> int:
        """Count `part` (a chapter index) as narrated; returns how many chapters are."""
        pipe = self.redis.pipeline()
        pipe.sadd(keys.book_finished_key(book_id), part)
        pipe.scard(keys.book_finished_key(book_id))
        return int(pipe.execute()[1])

    def lock_assembly(self, book_id: str, token: str, ttl_s: float) -> bool:
        return bool(self.redis.set(keys.book_assembly_lock_key(book_id), token, nx=True, px=int(ttl_s * 1000)))

    def unlock_assembly(self, book_id: str) -> None:
        self.redis.delete(keys.book_assembly_lock_key(book_id))

    def list(self, limit: int = 20, tenant: str | None = None) -> list[Book]:
        """Newest first; with `tenant`, only its books."""
        found: list[Book] = []
        ids: Any = self.redis.zrevrange(keys.BOOK_INDEX_KEY, 0, 999)
        for raw in ids:
            try:
                found.append(self.get(text(raw), tenant))
            except JobNotFoundError:
                continue
            if len(found) >= limit:
                break
        return found


def _encoded(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: dumps(v) if isinstance(v, dict | list) else v for k, v in fields.items()}
