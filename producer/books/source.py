"""A book file (EPUB, Markdown, plain text) read into chapters: the text each chapter's narration job will speak.

`read_book` picks the reader by the file's extension, then applies the rules every format shares: titles
normalized, chapters without words dropped, a chapter over the job text limit split into parts, a book over its
limit refused. Every refusal is an InvalidRequestError on the field "file" that says what is wrong and where.
"""

from __future__ import annotations

import re
from pathlib import PurePath

from producer.books.source_model import BookDraft, BookSource, SourceChapter, book_error, clean, decode_text, has_words
from producer.request import MAX_TEXT_CHARS

__all__ = ["BOOK_EXTENSIONS", "MAX_BOOK_CHARS", "MAX_TITLE_CHARS", "BookSource", "SourceChapter", "read_book"]

BOOK_EXTENSIONS = (".epub", ".md", ".markdown", ".txt")
MAX_BOOK_CHARS = 5_000_000
MAX_TITLE_CHARS = 200
# The space after a sentence's end (., !, ?, an ellipsis), maybe after a closing quote or bracket.
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026][\"'\u201d\u2019\u00bb)\]])\s+|(?<=[.!?\u2026])\s+")

def read_book(data: bytes, filename: str, max_chapter_chars: int = MAX_TEXT_CHARS,
              max_book_chars: int = MAX_BOOK_CHARS) -> BookSource:
    """Read an .epub, .md/.markdown or .txt file (the format is the extension's) into a BookSource.

    A chapter longer than `max_chapter_chars` becomes consecutive parts within it; a book over `max_book_chars`
    (titles and texts) is refused. Raises InvalidRequestError (field "file") saying what is wrong and where.
    """
    if max_chapter_chars < 1:
        raise ValueError(f"max_chapter_chars must be positive, not {max_chapter_chars}")
    suffix = PurePath(filename).suffix.lower()
    if suffix not in BOOK_EXTENSIONS:
        raise book_error(filename, f"not a book file: the name must end in {', '.join(BOOK_EXTENSIONS)}")
    if suffix == ".epub":
        from producer.books.source_epub import read_epub

        draft = read_epub(data, filename)
    elif suffix == ".txt":
        from producer.books.source_text import read_text

        draft = read_text(decode_text(data, filename))
    else:
        from producer.books.source_markdown import read_markdown

        draft = read_markdown(decode_text(data, filename))
    return _finish(draft, filename, max_chapter_chars, max_book_chars)


def _finish(draft: BookDraft, filename: str, max_chapter_chars: int, max_book_chars: int) -> BookSource:
    chapters: list[SourceChapter] = []
    for chapter in draft.chapters:
        text = chapter.text.strip()
        if has_words(text):
            chapters.extend(_split_chapter(clean(chapter.title), text, max_chapter_chars))
    if not chapters:
        raise book_error(filename, "no readable text: no chapter has any words to narrate")
    title = _shorten(clean(draft.title), MAX_TITLE_CHARS) or _shorten(clean(PurePath(filename).stem), MAX_TITLE_CHARS)
    book = BookSource(title=title or "Untitled", author=clean(draft.author or "") or None,
                      language=clean(draft.language or "") or None, cover=draft.cover,
                      cover_type=draft.cover_type if draft.cover else None, chapters=chapters)
    if book.chars > max_book_chars:
        raise book_error(filename, f"the book has {book.chars:,} characters (titles and text); "
                                   f"the limit is {max_book_chars:,}")
    return book


def _split_chapter(title: str, text: str, limit: int) -> list[SourceChapter]:
    """The chapter as consecutive parts of at most `limit` characters; the first keeps the title."""
    parts = _pieces(text, limit, 0)
    chapters = [SourceChapter(_shorten(title, MAX_TITLE_CHARS), parts[0])]
    for number, part in enumerate(parts[1:], start=2):
        suffix = f" (part {number})" if title else f"Part {number}"
        chapters.append(SourceChapter(_shorten(title, MAX_TITLE_CHARS - len(suffix)) + suffix, part))
    return chapters


def _pieces(text: str, limit: int, level: int) -> list[str]:
    """Split at paragraph breaks (level 0), else sentence ends (1), else spaces (2), else anywhere; then pack the
    units greedily into pieces of at most `limit` characters."""
    if len(text) <= limit:
        return [text]
    if level == 3:
        return [text[i:i + limit] for i in range(0, len(text), limit)]
    joiner = "\n\n" if level == 0 else " "
    units = text.split("\n\n") if level == 0 else _SENTENCE_END.split(text) if level == 1 else text.split(" ")
    pieces: list[str] = []
    current = ""
    for unit in units:
        for piece in _pieces(unit, limit, level + 1):
            if current and len(current) + len(joiner) + len(piece) <= limit:
                current += joiner + piece
            else:
                if current:
                    pieces.append(current)
                current = piece
    if current:
        pieces.append(current)
    return pieces


def _shorten(text: str, limit: int) -> str:
    """At most `limit` characters, cut at a word boundary with an ellipsis when it is longer."""
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return cut.rstrip(" ,;:-") + "…"
