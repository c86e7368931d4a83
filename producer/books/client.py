"""BookClient: submit a book as one narration job per chapter after one voice anchor; status, cancel and retry of the
book as a whole; what a worker does when one of a book's jobs has finished narrating."""

from __future__ import annotations

import json
import logging
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from producer import keys
from producer.books.record import ANCHOR, Book
from producer.books.source import BookSource
from producer.books.store import BookStore
from producer.client import NarrationClient
from producer.errors import InvalidRequestError, JobNotFoundError, JobStateError
from producer.job import Job
from producer.request import NarrationRequest
from producer.states import JobState
from producer.storage import Storage, open_storage
from producer.voice import check_voice_prompt, store_voice_prompt, upload_voice_prompt

__all__ = ["BOOK_OPTIONS", "BookClient", "anchor_text"]

log = logging.getLogger(__name__)

# The narration options a book takes; every part of it shares them.
BOOK_OPTIONS = ("speaker_id", "temperature", "top_k", "output_format", "priority", "voice_text", "lexicon")
ANCHOR_CHARS = (80, 180)  # the voice anchor's text: whole sentences from the book's opening, this many characters


def anchor_text(chapter_texts: list[str]) -> str:
    """The book's opening sentences, at least ANCHOR_CHARS[0] characters when the book has them and at most
    ANCHOR_CHARS[1] (cut between words when one sentence is longer): what the voice anchor says."""
    low, high = ANCHOR_CHARS
    words = " ".join(" ".join(chapter_texts).split())
    sentences = re.findall(r"[^.!?]+[.!?]*(?:\s+|$)", words)
    said = ""
    for sentence in sentences:
        if len(said) >= low or len(said + sentence) > high:
            break
        said += sentence
    if not said.strip():
        said = words[:high].rsplit(" ", 1)[0] if len(words) > high else words
    return said.strip()


class BookClient:
    """Books over a NarrationClient: each part of a book is an ordinary job (listed, resumed, retried as any)."""

    def __init__(self, narrations: NarrationClient) -> None:
        self.narrations = narrations
        self.books = BookStore(narrations.jobs.redis)

    @cached_property
    def storage(self) -> Storage:
        return open_storage(self.narrations.settings)

    def object_key(self, book_id: str, name: str) -> str:
        return self.storage.key_for(keys.BOOKS_FOLDER, f"{book_id}/{name}")

    def submit(self, source: BookSource, options: dict[str, Any], voice_prompt: str | Path | None = None,
               tenant: str | None = None, stored_voice: str | None = None) -> Book:
        """Check every part's request, then record the book and enqueue its first jobs: every chapter when a voice
        is given (a recording, or `stored_voice`: the SHA-256 of one already stored), else the voice anchor (the
        chapters follow once it is narrated)."""
        unknown = sorted(set(options) - set(BOOK_OPTIONS))
        if unknown:
            raise InvalidRequestError(f"a book does not take {unknown[0]!r}; it takes {', '.join(BOOK_OPTIONS)}",
                                      [(unknown[0], "not an option of a book")])
        if voice_prompt is not None:
            if not options.get("voice_text"):
                raise InvalidRequestError("a voice prompt needs its transcript (voice_text)")
            options = {**options, "voice_prompt_sha256": upload_voice_prompt(voice_prompt, self.storage)}
        elif stored_voice is not None:
            options = {**options, "voice_prompt_sha256": stored_voice}
        elif options.get("voice_text"):
            raise InvalidRequestError("voice_text needs its recording (the voice prompt file)")
        chapters = [{"index": i, "title": c.title, "chars": len(c.text)} for i, c in enumerate(source.chapters)]
        draft = Book("0" * 32, source.title, 0.0, options, chapters)
        texts = [draft.chapter_text(i, c.text) for i, c in enumerate(source.chapters)]
        for i, chapter_text in enumerate(texts):
            _parse({"text": chapter_text, **options}, f"chapter {i} ({chapters[i]['title'] or 'untitled'})")
        book = self.books.create(source.title, source.author, options, chapters, tenant)
        self.storage.put_bytes(self.object_key(book.id, "source.json"), json.dumps({"chapters": texts}).encode(),
                               "application/json")
        if source.cover:
            self.storage.put_bytes(self.object_key(book.id, "cover"), source.cover, source.cover_type or "image/jpeg")
            self.books.set_fields(book.id, cover_type=source.cover_type or "image/jpeg")
        if options.get("voice_prompt_sha256"):
            self.fan_out(book.id)
        else:
            anchor = _parse({"text": anchor_text([c.text for c in source.chapters]), **options,
                             "output_format": "wav", "idempotency_key": f"book:{book.id}:{ANCHOR}"}, "voice anchor")
            job = self.narrations.submit(anchor, tenant=tenant, book=(book.id, ANCHOR))
            self.books.set_part_job(book.id, ANCHOR, job.id)
        log.info("book %s: %d chapters, %d characters", book.id, len(chapters), source.chars)
        return self.books.get(book.id)

    def fan_out(self, book_id: str) -> None:
        """Enqueue every chapter not enqueued yet, in the book's voice (again safe: each part has its idempotency
        key, so a repeated fan-out finds the jobs it made)."""
        book = self.books.get(book_id)
        if book.state is not None:
            return
        voice = {k: book.options[k] for k in ("voice_prompt_sha256", "voice_text") if book.options.get(k)} or \
            {"voice_prompt_sha256": (book.anchor or {})["sha256"], "voice_text": (book.anchor or {})["text"]}
        texts = json.loads(self.storage.get_bytes(self.object_key(book_id, "source.json")) or b"{}")["chapters"]
        for chapter in book.chapters:
            part = str(chapter["index"])
            if part in book.jobs:
                continue
            request = _parse({"text": texts[chapter["index"]], **book.options, **voice,
                              "idempotency_key": f"book:{book_id}:{part}"}, f"chapter {part}")
            job = self.narrations.submit(request, tenant=book.tenant, book=(book_id, part))
            self.books.set_part_job(book_id, part, job.id)
            if self.books.get(book_id).state is not None:  # canceled meanwhile: its cancel may not have seen this job
                self.narrations.cancel(job.id)
                return
        log.info("book %s: %d chapters enqueued", book_id, len(book.chapters))

    def parts(self, book: Book) -> dict[str, Job]:
        """The jobs of the book's parts that exist (a record that expired is left out)."""
        found = {}
        for part, job_id in book.jobs.items():
            try:
                found[part] = self.narrations.get(job_id)
            except JobNotFoundError:  # an expired part record: the book shows it as waiting
                continue
        return found

    def status(self, book_id: str, tenant: str | None = None) -> dict[str, Any]:
        book = self.books.get(book_id, tenant)
        return book.to_public(self.parts(book))

    def cancel(self, book_id: str, tenant: str | None = None) -> dict[str, Any]:
        """Cancel the book and every part of it (queued parts at once, running ones at their next chunk)."""
        book = self.books.get(book_id, tenant)
        if book.state is JobState.SUCCEEDED:
            raise JobStateError(f"book {book_id} cannot be canceled: it succeeded")
        self.books.finish(book_id, JobState.CANCELED)
        for job in self.parts(book).values():
            if not job.state.is_terminal:
                self.narrations.cancel(job.id)
        return self.status(book_id, tenant)

    def retry(self, book_id: str, tenant: str | None = None) -> dict[str, Any]:
        """Retry a failed book: its failed or expired parts are queued again (each resumes from its stored chunks),
        missing chapters are enqueued and, when every chapter is narrated, the assembly is sent again."""
        book = self.books.get(book_id, tenant)
        if book.state in (JobState.SUCCEEDED, JobState.CANCELED):
            raise JobStateError(f"book {book_id} cannot be retried: it is {book.state.value}")
        self.books.reopen(book_id)
        for job in self.parts(book).values():
            if job.state in (JobState.FAILED, JobState.EXPIRED):
                self.narrations.retry(job.id)
        book = self.books.get(book_id)
        if book.anchor or book.options.get("voice_prompt_sha256"):
            self.fan_out(book_id)
        if book.status(self.parts(book))[1] == "assembling":  # every chapter succeeded
            self.send_assembly(book_id)
        return self.status(book_id, tenant)

    def send_assembly(self, book_id: str) -> None:
        self.narrations.send_task(keys.BOOK_ASSEMBLE_TASK, [book_id], keys.BOOK_QUEUE)
        log.info("book %s: assembly sent", book_id)

    def part_narrated(self, job: Job, result: dict[str, Any], rerendered: bool = False) -> None:
        """Called by the worker once a part's narration is delivered, before its job succeeds (so a worker that dies
        in between runs the part again and calls this again): the anchor becomes the book's voice and the chapters
        are enqueued; a chapter has its AAC made for the assembly at once (producer/books/pre_encode.py), except the
        last, which sends the assembly. A re-rendered chapter of an assembled book has the book assembled again (its
        M4B replaced)."""
        assert job.book_id and job.book_part
        if rerendered and job.book_part != ANCHOR and self.books.get(job.book_id).state is JobState.SUCCEEDED:
            self.books.reopen(job.book_id)
        if job.book_part == ANCHOR:
            prompt = check_voice_prompt(self.storage.get_bytes(result["key"]) or b"", "voice anchor")
            self.books.set_fields(job.book_id, anchor={"sha256": store_voice_prompt(prompt, self.storage),
                                                       "text": job.request["text"], "seconds": prompt.seconds})
            self.fan_out(job.book_id)
            return
        if self.books.part_finished(job.book_id, job.book_part) >= len(self.books.get(job.book_id).chapters):
            self.send_assembly(job.book_id)  # encodes this chapter itself: it would wait for it anyway
        else:
            fields = {k: result.get(k) for k in ("key", "sha256", "format", "sample_rate", "duration_s")}
            self.narrations.send_task(keys.BOOK_PRE_ENCODE_TASK, [job.book_id, int(job.book_part), fields],
                                      keys.BOOK_QUEUE)


def _parse(fields: dict[str, Any], what: str) -> NarrationRequest:
    try:
        return NarrationRequest.parse(fields)
    except InvalidRequestError as e:
        raise InvalidRequestError(f"{what}: {e}", e.fields) from e
