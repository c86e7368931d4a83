"""A plain-text book read into chapters at its heading lines ("CHAPTER IV. The Storm", "Prologue", "12.")."""

from __future__ import annotations

import re
from itertools import pairwise

from producer.books.source_model import BookDraft, SourceChapter, clean, has_words, join_paragraphs

__all__ = ["is_heading", "read_text"]

MAX_HEADING_CHARS = 80
MAX_TITLE_LINE_CHARS = 100

_KEYWORD = r"(?:chapter|part|book|prologue|epilogue|interlude|preface|introduction|afterword)"
_NUMBER_WORD = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|"
                r"sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
                r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last|final)")
_ROMAN = r"(?=[ivxlcdm])m{0,4}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
_NUMBER = rf"(?:\d+|{_ROMAN}|{_NUMBER_WORD}(?:[- ]{_NUMBER_WORD})*)"
_SEPARATOR = r"\s*[:.\-\u2013\u2014]\s*"  # colon, dot, hyphen, en or em dash
_HEADING = re.compile(
    rf"""{_KEYWORD}\s+{_NUMBER}(?:\.?(?:{_SEPARATOR}\S.*|\s+(?P<plain>\S.*))|\.)?  # Chapter IV. The Storm
    |{_KEYWORD}(?:{_SEPARATOR}\S.*|\.)?  # Prologue, Prologue: Before
    |{_ROMAN}\.?|\d+\.?  # IV, 12.
    """, re.IGNORECASE | re.VERBOSE)


def is_heading(paragraph: str) -> bool:
    """A single line of at most 80 characters that names a chapter, part, prologue... or is only a numeral."""
    line = paragraph.strip()
    if "\n" in line or not line or len(line) > MAX_HEADING_CHARS:
        return False
    match = _HEADING.fullmatch(line)
    # "Part two is where it starts." is prose: a title after a bare space must start like one.
    return match is not None and not (match.group("plain") or "X")[0].islower()


def read_text(text: str) -> BookDraft:
    """Chapters at the heading lines when there are two or more; else the whole text is one chapter.

    Before the first heading, a lone short line is the book's title; other text is a chapter titled "".
    """
    paragraphs = [paragraph for paragraph in re.split(r"\n[ \t]*\n", text) if paragraph.strip()]
    headings = [i for i, paragraph in enumerate(paragraphs) if is_heading(paragraph)]
    if len(headings) < 2:
        return BookDraft(chapters=[SourceChapter("", join_paragraphs(paragraphs))])
    draft = BookDraft()
    preamble = paragraphs[:headings[0]]
    first_line = clean(preamble[0]) if len(preamble) == 1 and "\n" not in preamble[0].strip() else ""
    if first_line and len(first_line) <= MAX_TITLE_LINE_CHARS and has_words(first_line):
        draft.title = first_line
    elif preamble:
        draft.chapters.append(SourceChapter("", join_paragraphs(preamble)))
    for start, end in pairwise([*headings, len(paragraphs)]):
        title = clean(paragraphs[start]).rstrip(".")
        draft.chapters.append(SourceChapter(title, join_paragraphs(paragraphs[start + 1:end])))
    return draft
