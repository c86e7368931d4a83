"""A book's assembly, once every chapter is narrated: its chapters' files -> book.m4b with a marker per chapter, the
book's captions and its manifest, uploaded next to its source; then the book succeeds. Runs on the service worker."""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from producer.books.assembly import ChapterAudio, ChapterMark, assemble_m4b, book_captions
from producer.books.chapter_aac import aac_rate, read_aac
from producer.books.client import BookClient
from producer.books.pre_encode import aac_key, narration_file
from producer.books.record import Book
from producer.errors import EchoForgeError, ErrorCode, StorageError
from producer.job import Job
from producer.states import JobState

__all__ = ["Assembly", "assemble_book"]

log = logging.getLogger(__name__)

Assembly = Literal["done", "waiting", "busy", "skipped"]
FETCHERS = 8  # chapters downloaded side by side (S3 clients are thread-safe; a small book's latency is round trips)
LOCK_TTL_S = 3600.0  # longer than any assembly; a worker that dies holding it has its message redelivered later


def assemble_book(books: BookClient, book_id: str) -> Assembly:
    """Assemble the book unless it is not ready ("waiting": a chapter's job has not recorded its success yet),
    already being assembled ("busy"), or already final ("skipped"). A failed assembly fails the book."""
    book = books.books.get(book_id)
    parts = books.parts(book)
    state, phase, _ = book.status(parts)
    if book.state is not None or state is JobState.FAILED:
        return "skipped"
    if phase != "assembling":
        return "waiting"
    token = uuid.uuid4().hex
    if not books.books.lock_assembly(book_id, token, LOCK_TTL_S):
        return "busy"
    try:
        result = _assemble(books, book, [parts[str(c["index"])] for c in book.chapters])
        books.books.finish(book_id, JobState.SUCCEEDED, result=result)
        log.info("book %s: assembled, %.1f s in %d chapters at %s", book_id, result["duration_s"],
                 len(book.chapters), result["url"])
        return "done"
    except Exception as e:
        code = e.code if isinstance(e, EchoForgeError) else ErrorCode.INTERNAL_ERROR
        log.exception("book %s: assembly failed", book_id)
        books.books.finish(book_id, JobState.FAILED, error={"code": code.value, "part": "assembly",
                                                            "message": f"assembly failed: {str(e)[:400]}"})
        return "done"
    finally:
        books.books.unlock_assembly(book_id)


def _chapters(books: BookClient, book: Book, chapters: list[Job], rate: int, folder: Path) -> list[ChapterAudio]:
    """Each chapter's files in `folder`, FETCHERS at a time: its pre-encoded AAC where it exists at the book's rate
    (the narration is then not downloaded), else its narration; and its captions."""
    def fetch(chapter: dict[str, Any], job: Job) -> ChapterAudio:
        result, index = job.result or {}, chapter["index"]
        aac = _pre_encoded(books, book.id, index, result, rate, folder / f"{index:04d}.m4a")
        path, raw_rate = (folder / f"{index:04d}.unused", None) if aac else \
            narration_file(books.storage, result, folder, f"{index:04d}")
        vtt = books.storage.get_bytes(result["captions"]["vtt"]) if result.get("captions") else None
        return ChapterAudio(chapter["title"], path, vtt.decode() if vtt else None, raw_rate, aac)

    with ThreadPoolExecutor(max_workers=FETCHERS, thread_name_prefix="fetch") as pool:
        audio = list(pool.map(fetch, book.chapters, chapters))
    log.info("book %s: %d of %d chapters already encoded to AAC", book.id, sum(a.aac is not None for a in audio),
             len(chapters))
    return audio


def _pre_encoded(books: BookClient, book_id: str, index: int, result: dict[str, Any], rate: int,
                 destination: Path) -> Path | None:
    """The chapter's AAC downloaded to `destination` when it was made (producer/books/pre_encode.py) at `rate` and
    reads as AAC; else None."""
    if not result.get("sha256") or aac_rate(int(result["sample_rate"])) != rate:
        return None
    if not books.storage.download_if_exists(aac_key(books, book_id, index, result["sha256"]), destination):
        return None
    try:
        read_aac(f"chapter {index}", destination)
    except StorageError as error:
        log.warning("book %s: chapter %d's AAC is unusable, encoding it again: %s", book_id, index, error)
        return None
    return destination


def _assemble(books: BookClient, book: Book, chapters: list[Job]) -> dict[str, Any]:
    storage = books.storage
    with tempfile.TemporaryDirectory(prefix=f"echoforge-book-{book.id[:8]}-") as tmp:
        folder = Path(tmp)
        rate = aac_rate(int((chapters[0].result or {})["sample_rate"]))  # the first chapter's, as pre_encode makes it
        audio = _chapters(books, book, chapters, rate, folder)
        cover = storage.get_bytes(books.object_key(book.id, "cover")) if book.cover_type else None
        m4b = folder / "book.m4b"
        marks = assemble_m4b(audio, m4b, title=book.title, author=book.author, cover=cover,
                             cover_type=book.cover_type, rate=rate)
        srt, vtt_text = book_captions(audio, marks)
        names = {"audio": "book.m4b", "srt": "book.srt", "vtt": "book.vtt", "manifest": "book-manifest.json"}
        keys = {kind: books.object_key(book.id, name) for kind, name in names.items()}
        manifest = json.dumps(_manifest(book, chapters, marks), indent=1).encode()
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="upload") as pool:  # four objects, side by side
            uploads = [pool.submit(storage.put_file, keys["audio"], m4b, "audio/mp4"),
                       pool.submit(storage.put_bytes, keys["srt"], srt.encode(), "application/x-subrip"),
                       pool.submit(storage.put_bytes, keys["vtt"], vtt_text.encode(), "text/vtt"),
                       pool.submit(storage.put_bytes, keys["manifest"], manifest, "application/json")]
            for upload in uploads:
                upload.result()
        return {"url": storage.url_for(keys["audio"]), "bucket": storage.bucket, "key": keys["audio"],
                "format": "m4b", "duration_s": round(marks[-1].end_s, 3), "bytes": m4b.stat().st_size,
                "chapters": len(marks), "captions": {"srt": keys["srt"], "vtt": keys["vtt"]},
                "manifest_key": keys["manifest"]}


def _manifest(book: Book, chapters: list[Job], marks: list[ChapterMark]) -> dict[str, Any]:
    """The book manifest: each chapter's place in the M4B, its job, its own files and the hash of its text."""
    return {"book_id": book.id, "title": book.title, "author": book.author, "anchor": book.anchor,
            "chapters": [{**asdict(mark), "job": job.id, "text_sha256": job.request.get("text_sha256"),
                          "narration_key": (job.result or {}).get("key"),
                          "captions": (job.result or {}).get("captions")}
                         for mark, job in zip(marks, chapters, strict=True)]}
