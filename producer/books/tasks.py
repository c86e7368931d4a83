"""The book assembly task, on its own queue (echoforge.books) served by the service worker (producer/webhooks/app.py),
never by a GPU worker."""

from __future__ import annotations

from functools import cache

from celery import Task

from producer import keys
from producer.books.assemble import assemble_book
from producer.books.client import BookClient
from producer.client import NarrationClient
from producer.webhooks.app import app, settings

__all__ = ["assemble"]

WAIT_S = 1.0  # a chapter's job records its success just after it sends the assembly
MAX_WAITS = 300


@cache
def _books() -> BookClient:
    return BookClient(NarrationClient(settings))


@app.task(name=keys.BOOK_ASSEMBLE_TASK, bind=True, max_retries=MAX_WAITS)
def assemble(self: Task, book_id: str) -> str:
    outcome = assemble_book(_books(), book_id)
    if outcome == "waiting":
        raise self.retry(countdown=WAIT_S)
    return outcome
