"""What a book reader makes (BookDraft, then BookSource with its SourceChapters) and the small text rules every
format's reader shares (producer/books/source_*.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from producer.errors import InvalidRequestError

__all__ = ["BookDraft", "BookSource", "SourceChapter", "book_error", "clean", "decode_text", "has_words",
           "join_paragraphs"]

_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"))  # soft hyphen, zero-width characters


@dataclass(frozen=True)
class SourceChapter:
    """One chapter: its title as a listener should hear it ("" when it has none) and the plain text of its body
    (paragraphs separated by a blank line, no title line)."""

    title: str
    text: str


@dataclass(frozen=True)
class BookSource:
    """A book read from a file: its metadata and its chapters in reading order (at least one)."""

    title: str  # never empty: metadata, else a title heading, else the file name's stem
    author: str | None
    language: str | None
    cover: bytes | None  # the cover image's bytes, when the source has one
    cover_type: str | None  # image/jpeg or image/png
    chapters: list[SourceChapter]

    @property
    def chars(self) -> int:
        """Characters of every title and text: what the book's narration jobs will carry."""
        return sum(len(chapter.title) + len(chapter.text) for chapter in self.chapters)


@dataclass
class BookDraft:
    """What a format's reader found, before the shared rules: the title may be empty, chapters are unsplit."""

    title: str = ""
    author: str | None = None
    language: str | None = None
    cover: bytes | None = None
    cover_type: str | None = None
    chapters: list[SourceChapter] = field(default_factory=list)


def book_error(filename: str, reason: str) -> InvalidRequestError:
    return InvalidRequestError(f"{filename}: {reason}", [("file", reason)])


def clean(text: str) -> str:
    """Collapse every run of whitespace to one space and trim; drop soft hyphens and zero-width characters."""
    return " ".join(text.translate(_INVISIBLE).split())


def has_words(text: str) -> bool:
    """Whether a listener would hear anything: a letter or a digit (a "* * *" scene break has neither)."""
    return any(ch.isalnum() for ch in text)


def join_paragraphs(paragraphs: list[str]) -> str:
    """Clean each paragraph (its lines joined by spaces) and join those with words by blank lines."""
    cleaned = (clean(paragraph) for paragraph in paragraphs)
    return "\n\n".join(paragraph for paragraph in cleaned if has_words(paragraph))


def decode_text(data: bytes, filename: str) -> str:
    """UTF-8 (a BOM is fine) with newlines made "\\n"; else an error naming the first bad byte's offset and line."""
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        line = data.count(b"\n", 0, offset) + 1
        raise book_error(filename, f"not UTF-8 text: the byte 0x{data[offset]:02x} at offset {offset} (line {line}) "
                                   "is not valid UTF-8; save the file as UTF-8") from e
    return text.replace("\r\n", "\n").replace("\r", "\n")
