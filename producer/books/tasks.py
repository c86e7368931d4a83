"""The book assembly task, on its own queue (echoforge.books) served by the service worker (producer/webhooks/app.py),
never by a GPU worker."""

from __future__ import annotations

import logging
from functools import cache
from typing import Any

from celery import Task

from producer import keys
from producer.books.assemble import assemble_book
from producer.books.client import BookClient
from producer.books.pre_encode import aac_key, pre_encode_chapter
from producer.client import NarrationClient
from producer.webhooks.app import app, settings

__all__ = ["assemble", "pre_encode"]

log = logging.getLogger(__name__)

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


@app.task(name=keys.BOOK_PRE_ENCODE_TASK)
def pre_encode(book_id: str, index: int, result: dict[str, Any]) -> None:
    """Best effort: a chapter whose AAC is missing is encoded by the assembly instead."""
    try:
        books = _books()
        pre_encode_chapter(books.storage, aac_key(books, book_id, index, result["sha256"]), index, result)
    except Exception:
        log.exception("book %s: chapter %d could not be encoded ahead; the assembly will encode it", book_id, index)
