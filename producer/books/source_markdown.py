"""A Markdown book read into chapters at its headings, as plain text a narrator can speak.

markdown-it-py parses it (CommonMark plus tables and strikethrough); what a listener would not want read is left
out: emphasis markers, link targets, images, HTML tags, code blocks, the YAML front matter.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

from producer.books.source_model import BookDraft, SourceChapter, clean, has_words, join_paragraphs

__all__ = ["read_markdown"]

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*$\n?", re.DOTALL | re.MULTILINE)
_BLOCK_ENDS = {"heading_close", "paragraph_close", "th_close", "td_close", "list_item_open", "list_item_close"}

Block = tuple[int, str]  # (heading level, or 0 for any other block; its text)


def read_markdown(text: str) -> BookDraft:
    """Chapters at the highest heading level that occurs at least twice (so `#` when there are two or more, `##`
    under a lone `#` title); a lone `#` before the first chapter is the book's title; no such headings: one chapter."""
    meta, body = _front_matter(text)
    draft = BookDraft(title=_meta_text(meta.get("title")), author=_meta_text(meta.get("author")) or None,
                      language=_meta_text(meta.get("lang") or meta.get("language")) or None)
    blocks = _blocks(MarkdownIt("commonmark").enable(["table", "strikethrough"]).parse(body))
    counts = Counter(level for level, _ in blocks if level)
    split = min((level for level, count in counts.items() if count >= 2), default=0)
    starts = [i for i, (level, _) in enumerate(blocks) if split and level == split]
    first_chapter = starts[0] if starts else len(blocks)
    lone_title = next((i for i, (level, _) in enumerate(blocks) if level == 1), None) if counts[1] == 1 else None
    if lone_title is not None and lone_title < first_chapter and (starts or lone_title == 0):
        draft.title = draft.title or blocks[lone_title][1]
    else:
        lone_title = None
    preamble = [block for i, (_, block) in enumerate(blocks[:first_chapter]) if i != lone_title]
    if has_words(" ".join(preamble)):
        draft.chapters.append(SourceChapter("", join_paragraphs(preamble)))
    for start, end in pairwise([*starts, len(blocks)]):
        draft.chapters.append(SourceChapter(blocks[start][1], join_paragraphs([t for _, t in blocks[start + 1:end]])))
    return draft


def _front_matter(text: str) -> tuple[dict[str, Any], str]:
    """A leading `---` ... `---` block that YAML reads as a mapping, and the text after it; else ({}, text)."""
    import yaml

    match = _FRONT_MATTER.match(text)
    if match is None:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}, text
    if not isinstance(meta, dict):  # a thematic break (---) opening the text, not front matter
        return {}, text
    return {str(key).lower(): value for key, value in meta.items()}, text[match.end():]


def _meta_text(value: object) -> str:
    """A front matter value as text: a list (several authors) joined with commas."""
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(clean(str(item)) for item in value if item is not None)
    return clean(str(value))


def _blocks(tokens: Sequence[Token]) -> list[Block]:
    """The document's blocks in order: top-level headings keep their level, every other block is 0; each list
    item is one block; code blocks and HTML blocks are dropped (their tokens carry no inline children)."""
    blocks: list[Block] = []
    buffer: list[str] = []
    heading = items = 0
    for token in tokens:
        if token.type == "heading_open":
            heading = int(token.tag[1:]) if token.level == 0 else 0
        elif token.type == "inline":
            buffer.append(_inline_text(token.children or []))
        elif token.type == "paragraph_close" and items:
            buffer.append(" ")  # a list item's paragraphs make one block
        elif token.type in _BLOCK_ENDS:
            text = clean(" ".join(buffer))
            if text:
                blocks.append((heading if token.type == "heading_close" else 0, text))
            buffer.clear()
            heading = 0
            items += {"list_item_open": 1, "list_item_close": -1}.get(token.type, 0)
    return blocks


def _inline_text(children: Sequence[Token]) -> str:
    """Text and inline code as they read; line breaks as spaces; images, HTML tags and markup dropped."""
    parts: list[str] = []
    for child in children:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)
