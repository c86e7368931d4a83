"""Text for CSM: spell out what it mispronounces or hangs on, and split into sentence-aware chunks."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from num2words import num2words

from worker.narration.lexicon import Lexicon

__all__ = ["Chunk", "chunk_text", "estimate_tokens", "first_chunk_guess", "positions_needed", "speakable",
           "split_sentences"]

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ABBREVIATIONS = {
    "Dr.": "Doctor", "Mr.": "Mister", "Mrs.": "Missus", "Ms.": "Miz", "Prof.": "Professor", "St.": "Saint",
    "Jr.": "Junior", "Sr.": "Senior", "vs.": "versus", "etc.": "et cetera", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "Mt.": "Mount", "Ave.": "Avenue", "Gen.": "General",
    "Capt.": "Captain", "Lt.": "Lieutenant", "Sgt.": "Sergeant", "Co.": "Company", "Inc.": "Incorporated",
    **{f"{m[:3]}.": m for m in MONTHS if len(m) > 4}, "Sept.": "September",
}
SYMBOLS = {"&": " and ", "@": " at ", "+": " plus ", "=": " equals ", "°": " degrees", "§": " section ",
           "—": ", ", "\u2013": " to ", "…": "...", "*": " ", "_": " ", "~": " about ", "|": ", "}
CURRENCIES = {"$": "USD", "£": "GBP", "€": "EUR"}


MAX_NUMBER_DIGITS = 12  # longer digit runs (codes, serials) are read digit by digit


def _digits(raw: str) -> str:
    return " ".join("point" if c == "." else str(num2words(int(c))) for c in raw)


def _number(match: re.Match[str]) -> str:
    raw = match.group(0).replace(",", "")
    if len(raw.replace(".", "")) > MAX_NUMBER_DIGITS:
        return _digits(raw)
    if re.fullmatch(r"1[1-9]\d\d|20\d\d", raw):  # read four-digit numbers in this range as years
        return str(num2words(int(raw), to="year"))
    return str(num2words(float(raw) if "." in raw else int(raw)))


def _time(match: re.Match[str]) -> str:
    hour, minute, meridiem = int(match.group(1)), int(match.group(2)), (match.group(3) or "")
    words = str(num2words(hour))
    if minute == 0:
        words += "" if meridiem else " o'clock"
    else:
        words += (" oh " if minute < 10 else " ") + str(num2words(minute))
    suffix = meridiem.lower().replace(".", "")
    return words + (f" {suffix[0].upper()} M" if suffix else "")


def _iso_date(match: re.Match[str]) -> str:
    year, month, day = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return match.group(0)
    return f"{MONTHS[month - 1]} {num2words(day, to='ordinal')}, {num2words(year, to='year')}"


def _currency(match: re.Match[str]) -> str:
    raw = match.group(2).replace(",", "")
    if len(raw.replace(".", "")) > MAX_NUMBER_DIGITS:
        return f"{_digits(raw)} {CURRENCIES[match.group(1)]}"
    words = str(num2words(float(raw), to="currency", currency=CURRENCIES[match.group(1)]))
    return words.replace(", zero cents", "").replace(", zero pence", "").replace(", zero cent", "")


RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\s*[(\[{]\s*([^)\]}]*?)\s*[)\]}]"), r", \1,"),  # brackets are spoken as an aside
    (re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b"), _iso_date),
    (re.compile(r"\b(\d{1,2}):(\d{2})(?:\s*([ap]m)\b)?", re.IGNORECASE), _time),
    (re.compile(r"\b(\d{1,2})\s*([ap])m\b", re.IGNORECASE), lambda m: f"{m.group(1)} {m.group(2).upper()} M"),
    (re.compile(r"([$£€])\s?(\d[\d,]*(?:\.\d+)?)"), _currency),
    (re.compile(r"(\d+(?:\.\d+)?)\s?%"), r"\1 percent"),
    (re.compile(r"#\s?(?=\d)"), "number "),
    (re.compile(r"\b(\d+)(st|nd|rd|th)\b"), lambda m: str(num2words(int(m.group(1)), to="ordinal"))),
    (re.compile(r"(?<![\d.])-(?=\d)"), "minus "),
    (re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"), _number),
    (re.compile(r"\band/or\b"), "and or"),
    (re.compile(r"\s*,(\s*,)+"), ","),
    (re.compile(r"^\s*,\s*|(?<=[.!?;:])\s*,"), ""),
    (re.compile(r"\s+([,.!?;:])"), r"\1"),
    (re.compile(r"[ \t]{2,}"), " "),
]


def speakable(text: str, lexicon: Lexicon | None = None) -> str:
    """The sentence as CSM should read it: the lexicon's words respelled first (the respellings are then normalized
    like any text), then numbers, times, dates, money, symbols and abbreviations spelled out."""
    if lexicon is not None:
        text = lexicon.respell(text)
    for abbreviation, spoken in ABBREVIATIONS.items():
        text = re.sub(rf"(?<!\w){re.escape(abbreviation)}", spoken, text)
    text = re.sub(r"\b([aApP])\.[mM]\.(?=\s+[A-Z]|\s*$)", r"\1m.", text)  # keeps the full stop
    text = re.sub(r"\b([aApP])\.[mM]\.", r"\1m", text)
    text = re.sub(r"\bNo\.\s?(?=\d)", "number ", text)
    for symbol, spoken in SYMBOLS.items():
        text = text.replace(symbol, spoken)
    for pattern, replacement in RULES:
        text = pattern.sub(replacement, text)
    return text.strip()


_per_thread = threading.local()


def _segmenter() -> object:
    """pysbd's segmenter, one per thread: it keeps state while it segments, so jobs sharing a process (threads
    pool) must not share one (a shared one returned no sentences at all under load)."""
    segmenter = getattr(_per_thread, "segmenter", None)
    if segmenter is None:
        import pysbd

        segmenter = _per_thread.segmenter = pysbd.Segmenter(language="en", clean=False)
    return segmenter


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in _segmenter().segment(paragraph) if s.strip()]  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Chunk:
    index: int
    text: str  # what the model reads
    display: str  # the original words, for captions
    paragraph_end: bool  # a longer pause follows
    lexicon: tuple[str, ...] = ()  # the lexicon words that changed `text`


def _chunk(index: int, shown: list[str], spoken: list[str], paragraph_end: bool, lexicon: Lexicon | None) -> Chunk:
    """A chunk of these pieces of text (`shown`), `spoken` being what the model reads for each."""
    used = sorted(set().union(*(lexicon.used(piece) for piece in shown))) if lexicon is not None else []
    return Chunk(index, " ".join(spoken), " ".join(shown), paragraph_end, tuple(used))


def _pieces(sentence: str, max_chars: int, lexicon: Lexicon | None) -> list[str]:
    """A sentence whose spoken form is too long for one chunk: split at clause marks, between words, else anywhere.

    Every piece returned speaks in at most `max_chars` characters (a single character always does).
    """
    if len(speakable(sentence, lexicon)) <= max_chars or len(sentence) <= 1:
        return [sentence]
    parts = [p for p in re.split(r"(?<=[,;:])\s+", sentence) if p.strip()]
    if len(parts) == 1:
        words = sentence.split()
        half = len(words) // 2
        parts = [" ".join(words[:half]), " ".join(words[half:])] if half else [
            sentence[: len(sentence) // 2], sentence[len(sentence) // 2:]]
    return [piece for part in parts if part.strip() for piece in _pieces(part, max_chars, lexicon)]


def _said(pieces: list[str], lexicon: Lexicon | None) -> str:
    """What the model reads for these pieces of text, one after another."""
    return " ".join(speakable(piece, lexicon) for piece in pieces)


def _lead(sentences: list[str], budget: int, max_chars: int,
          lexicon: Lexicon | None) -> tuple[list[str], list[str]]:
    """A paragraph's sentences split into the first chunk's pieces (its leading whole sentences while they fit in
    `budget` speakable characters, else the first sentence's leading clauses) and the pieces left for later chunks."""
    count = 0
    while count < len(sentences) and len(_said(sentences[: count + 1], lexicon)) <= budget:
        count += 1
    head, left = sentences[:count], []
    if not count:
        clauses = _pieces(sentences[0], budget, lexicon)
        size = 1
        while size < len(clauses) and len(_said(clauses[: size + 1], lexicon)) <= budget:
            size += 1
        head, left, count = clauses[:size], clauses[size:], 1
    return head, left + [piece for s in sentences[count:] for piece in _pieces(s, max_chars, lexicon)]


def _pack(pieces: list[str], max_chars: int, first_index: int, lexicon: Lexicon | None) -> list[Chunk]:
    """A paragraph's pieces packed in order into chunks of at most `max_chars` speakable characters."""
    chunks: list[Chunk] = []
    spoken: list[str] = []
    shown: list[str] = []
    for piece in pieces:
        said = speakable(piece, lexicon)
        if spoken and len(" ".join([*spoken, said])) > max_chars:
            chunks.append(_chunk(first_index + len(chunks), shown, spoken, False, lexicon))
            spoken, shown = [], []
        spoken.append(said)
        shown.append(piece)
    if spoken:
        chunks.append(_chunk(first_index + len(chunks), shown, spoken, True, lexicon))
    return chunks


def chunk_text(text: str, max_chars: int = 300, first_chunk_chars: int = 0, *,
               lexicon: Mapping[str, str] | None = None) -> list[Chunk]:
    """Sentence-aware chunks of at most `max_chars` speakable characters; chunks never cross a paragraph.

    With `first_chunk_chars` (0: off) the first chunk is short, so the first audio comes soon: the text's leading
    sentences that fit in that many speakable characters, or, when the first sentence alone is longer, its leading
    clauses (split as a long sentence is); the rest of the paragraph is chunked as usual. A `lexicon` (word or
    phrase -> respelling) changes what the model reads, never `display`; each chunk lists the words it respelled.
    """
    compiled = Lexicon(lexicon) if lexicon else None
    chunks: list[Chunk] = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if not paragraph:
            continue
        sentences = split_sentences(paragraph.replace("\n", " "))
        if not chunks and first_chunk_chars and sentences:
            head, pieces = _lead(sentences, min(first_chunk_chars, max_chars), max_chars, compiled)
            chunks.append(_chunk(0, head, [speakable(piece, compiled) for piece in head], not pieces, compiled))
        else:
            pieces = [piece for s in sentences for piece in _pieces(s, max_chars, compiled)]
        chunks.extend(_pack(pieces, max_chars, len(chunks), compiled))
    return chunks


def first_chunk_guess(text: str, max_chars: int = 300, first_chunk_chars: int = 0, *,
                      lexicon: Mapping[str, str] | None = None) -> Chunk | None:
    """chunk_text's first chunk as planned from the opening of the first paragraph only (milliseconds, where the whole
    plan of a long text takes a second): right unless the opening is cut inside the first chunk's sentences, so a
    caller compares it with the plan before keeping what it made of it."""
    opening = next((p.strip() for p in text.split("\n\n") if p.strip()), "")[: 4 * max_chars]
    chunks = chunk_text(opening, max_chars, first_chunk_chars, lexicon=lexicon) if opening else []
    return chunks[0] if chunks else None


def estimate_tokens(text: str) -> int:
    """A generous upper bound on text tokens (Llama-3 BPE averages about 4 characters a token)."""
    return len(text) // 2 + 8


def positions_needed(chunk_text: str, chunk_frames: int, anchor_text: str = "", anchor_frames: int = 0) -> int:
    """Positions one generation uses: the anchor's text and audio frames, the chunk's text, the frames generated."""
    anchor = estimate_tokens(anchor_text) + anchor_frames if anchor_frames else 0
    return anchor + estimate_tokens(chunk_text) + chunk_frames
