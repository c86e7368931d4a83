"""The CLI's book commands: `submit --file book.epub` (or `--book` for Markdown and text), and status, wait,
cancel, retry and download when the id is a book's."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from producer.books.client import BookClient
from producer.books.source import read_book
from producer.errors import InvalidRequestError, JobNotReadyError
from producer.lexicon import read_lexicon
from producer.request import MAX_TEXT_CHARS

__all__ = ["is_book_submit", "run_book_command", "submit_book"]

FINAL = ("succeeded", "failed", "canceled")


def is_book_submit(args: argparse.Namespace) -> bool:
    return bool(args.file) and (args.book or str(args.file).lower().endswith(".epub"))


def submit_book(args: argparse.Namespace, books: BookClient) -> int:
    """Read, check and submit the book at --file; print it (and follow it with --wait)."""
    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InvalidRequestError(f"cannot read {path}: {e.strerror}") from e
    source = read_book(data, path.name, MAX_TEXT_CHARS, books.narrations.settings.max_book_chars)
    options = {"speaker_id": args.speaker, "temperature": args.temperature, "top_k": args.top_k,
               "output_format": args.format, "priority": args.priority, "voice_text": args.voice_text,
               "lexicon": read_lexicon(args.lexicon) if args.lexicon else None}
    book = books.submit(source, {k: v for k, v in options.items() if v is not None}, args.voice_prompt)
    if args.wait:
        return _follow(books, book.id, None, args.json)
    _print(books.status(book.id), args.json)
    return 0


def run_book_command(args: argparse.Namespace, books: BookClient) -> int:
    """status / wait / cancel / retry / download of a book."""
    book_id = args.job_id
    if args.command == "wait":
        return _follow(books, book_id, args.timeout, args.json)
    if args.command == "download":
        book = books.books.get(book_id)
        if book.state is None or not book.result:
            raise JobNotReadyError(f"book {book_id} has no audiobook to download yet")
        books.storage.download(book.result["key"], Path(args.output))
        print(args.output)
        return 0
    actions = {"status": books.status, "cancel": books.cancel, "retry": books.retry}
    _print(actions[args.command](book_id), args.json)
    return 0


def _follow(books: BookClient, book_id: str, timeout: float | None, as_json: bool) -> int:
    """Poll the book until it ends, a progress line on stderr; exit 0 only if it succeeded."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status = books.status(book_id)
        progress = status["progress"]
        print(f"\r{status['state']:9} {progress['phase']:10} {progress['chapters_done']}/"
              f"{progress['chapters_total']} chapters  {progress['audio_s']:.0f} s of audio", end="", file=sys.stderr)
        if status["state"] in FINAL or (deadline is not None and time.monotonic() > deadline):
            print(file=sys.stderr)
            _print(status, as_json)
            return 0 if status["state"] == "succeeded" else 1
        time.sleep(1.0)


def _print(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2))
        return
    progress = status["progress"]
    line = (f"{status['id']}  book  {status['state']}  {progress['chapters_done']}/{progress['chapters_total']} "
            f"chapters  {status['title']!r}")
    if status["result"]:
        line += f"  {status['result']['duration_s']:.1f}s  {status['result']['url']}"
    if status["error"]:
        line += f"  error={status['error']['code']}: {status['error']['message']}"
    print(line)
