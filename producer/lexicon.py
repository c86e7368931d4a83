"""A pronunciation lexicon: words or phrases and how to respell them for the model, read from a .json or .tsv file
or given as a request's `lexicon` object, checked by one set of rules either way."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from producer.errors import InvalidRequestError

__all__ = ["APOSTROPHES", "MAX_ENTRIES", "MAX_RESPELLING_CHARS", "MAX_WORD_CHARS", "check_lexicon", "lexicon_sha256",
           "parse_lexicon", "read_lexicon", "word_key"]

MAX_ENTRIES = 1000
MAX_WORD_CHARS = 64
MAX_RESPELLING_CHARS = 128
MAX_LEXICON_BYTES = 1024 * 1024
_PROBLEMS_SHOWN = 5
APOSTROPHES = "'\u2019"  # the typewriter one and the typographer's (books use both)
_WORD_MARKS = APOSTROPHES + "-."  # besides letters, digits and single spaces
_WORD_RULE = "a word is letters, digits, apostrophes, hyphens, periods and single spaces"

Entry = tuple[str, str, Any, str | None]  # (where: "line 3" or "key 'X'", word, respelling, a problem found already)


def word_key(word: str) -> str:
    """What a word is matched as: case-insensitive, either apostrophe."""
    return word.replace(APOSTROPHES[1], APOSTROPHES[0]).casefold()


def _word_problem(word: str) -> str | None:
    if not word:
        return "the word is empty"
    if len(word) > MAX_WORD_CHARS:
        return f"the word has {len(word)} characters; the limit is {MAX_WORD_CHARS}"
    bad = next((ch for ch in word if not (ch.isalpha() or ch.isdecimal() or ch in _WORD_MARKS or ch == " ")), None)
    if bad is not None:
        return f"the word {word!r} has {bad!r}: {_WORD_RULE}"
    if "  " in word or word != word.strip():
        return f"the word {word!r} has spaces that are not single spaces between words"
    if not any(ch.isalpha() or ch.isdecimal() for ch in word):
        return f"the word {word!r} has no letter or digit"
    return None


def _respelling_problem(respelling: str) -> str | None:
    if not respelling:
        return "the respelling is empty"
    if len(respelling) > MAX_RESPELLING_CHARS:
        return f"the respelling has {len(respelling)} characters; the limit is {MAX_RESPELLING_CHARS}"
    digit = next((ch for ch in respelling if ch.isdigit()), None)
    if digit is not None:
        return f"the respelling {respelling!r} has a digit ({digit!r}): spell numbers out"
    control = next((ch for ch in respelling if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp")), None)
    if control is not None:
        return f"the respelling has a control character ({control!r})"
    return None


def _checked(entries: Iterable[Entry]) -> dict[str, str]:
    """The entries, stripped and NFC-normalized, when every one is valid; else ValueError naming each bad one."""
    entries = list(entries)
    if len(entries) > MAX_ENTRIES:
        raise ValueError(f"has {len(entries):,} entries; the limit is {MAX_ENTRIES:,}")
    checked: dict[str, str] = {}
    seen: dict[str, str] = {}
    problems = []
    for where, word, respelling, found in entries:
        if found is None and not isinstance(respelling, str):
            found = "the respelling must be a string"
        if found is not None:
            problems.append(f"{where}: {found}")
            continue
        word, respelling = unicodedata.normalize("NFC", word.strip()), unicodedata.normalize("NFC", respelling.strip())
        problem = _word_problem(word) or _respelling_problem(respelling)
        if problem is None and word_key(word) in seen:
            problem = f"{word!r} repeats {seen[word_key(word)]} (words match whatever their case)"
        if problem is not None:
            problems.append(f"{where}: {problem}")
            continue
        seen[word_key(word)] = where
        checked[word] = respelling
    if problems:
        more = len(problems) - _PROBLEMS_SHOWN
        raise ValueError("; ".join(problems[:_PROBLEMS_SHOWN]) + (f"; and {more} more" if more > 0 else ""))
    return checked


def check_lexicon(entries: Mapping[str, str]) -> dict[str, str]:
    """A request's lexicon checked (ValueError naming the bad keys), stripped and NFC-normalized."""
    return _checked((f"key {word!r}", word, respelling, None) for word, respelling in entries.items())


def lexicon_sha256(entries: Mapping[str, str]) -> str:
    """The lexicon's identity: the SHA-256 of its entries as canonical JSON (sorted keys)."""
    canonical = json.dumps(dict(entries), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _tsv_entries(text: str) -> Iterable[Entry]:
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        columns = line.split("\t")
        problem = None if len(columns) == 2 else \
            f"{len(columns)} column{'s' if len(columns) > 1 else ''}, not two (word<TAB>respelling)"
        yield f"line {number}", columns[0], columns[-1], problem


class _Pairs(list[tuple[str, Any]]):
    """A JSON object's members in order, duplicates kept (json's object_pairs_hook)."""


def _json_entries(text: str) -> Iterable[Entry]:
    try:
        data = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from e
    if not isinstance(data, _Pairs):
        raise ValueError("must be a JSON object of word to respelling")
    for word, respelling in data:
        yield f"key {word!r}", word, respelling, None


def parse_lexicon(data: bytes, filename: str) -> dict[str, str]:
    """A lexicon file: .json (an object, word or phrase -> respelling) or .tsv (word<TAB>respelling a line; blank
    lines and `#` comments ignored). Refused with InvalidRequestError naming the line or key and why."""
    try:
        if len(data) > MAX_LEXICON_BYTES:
            raise ValueError(f"is {len(data):,} bytes; the limit is {MAX_LEXICON_BYTES:,}")
        kind = Path(filename).suffix.lower()
        if kind not in (".json", ".tsv"):
            raise ValueError("is not a .json or .tsv file")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise ValueError(f"line {line}: not UTF-8 (byte {e.start})") from e
        return _checked(_json_entries(text) if kind == ".json" else _tsv_entries(text))
    except ValueError as e:
        raise InvalidRequestError(f"lexicon {filename}: {e}", [("lexicon", str(e))]) from e


def read_lexicon(path: str | Path) -> dict[str, str]:
    """The lexicon file at `path` (the CLI's --lexicon)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InvalidRequestError(f"cannot read lexicon {path}: {e.strerror}", [("lexicon", "unreadable")]) from e
    return parse_lexicon(data, str(path))
