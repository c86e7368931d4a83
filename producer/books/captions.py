"""A book's captions: each chapter's WebVTT cues, read back, shifted to where the chapter starts in the book, and
written out again as one SubRip and one WebVTT file.

Times are kept in whole milliseconds (what both formats carry), so a cue clamped into its chapter's span stays inside
it once written. Cue text is carried as it is (lines kept); cue settings, ids, NOTE, STYLE and REGION blocks are not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Cue", "parse_vtt", "shift_cues", "to_srt", "to_vtt"]

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s+-->\s+{_TIME}(?:\s.*)?$")
_SKIPPED_BLOCKS = ("NOTE", "STYLE", "REGION")


@dataclass(frozen=True)
class Cue:
    """One caption: from `start_ms` to `end_ms` (milliseconds), its text (one or more lines)."""

    start_ms: int
    end_ms: int
    text: str


def _millis(hours: str | None, minutes: str, seconds: str, millis: str) -> int:
    return ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + int(millis)


def _blocks(text: str) -> list[list[str]]:
    """The blank-line separated blocks of a caption file, each a list of lines (BOM and CR dropped)."""
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line.strip():
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def _cue(block: list[str]) -> Cue | None:
    """The cue in one block (an optional id line, the timing line, the text), or None for any other block."""
    first = block[0].strip()
    if first.startswith("WEBVTT") or first.split(" ", 1)[0].split("\t", 1)[0] in _SKIPPED_BLOCKS:
        return None
    at = next((i for i, line in enumerate(block[:2]) if "-->" in line), None)
    if at is None:
        return None
    match = _TIMING.match(block[at])
    if match is None:
        raise ValueError(f"not a WebVTT cue timing: {block[at]!r}")
    parts = match.groups()
    start, end = _millis(*parts[:4]), _millis(*parts[4:])
    text = "\n".join(block[at + 1:])
    return Cue(start, end, text) if text and end > start else None


def parse_vtt(text: str) -> list[Cue]:
    """The cues of a WebVTT file, in file order: header, cue ids, NOTE/STYLE/REGION blocks and settings skipped.

    A cue with no text or no duration is dropped; a malformed timing line is a ValueError."""
    cues = [_cue(block) for block in _blocks(text)]
    return [cue for cue in cues if cue is not None]


def shift_cues(cues: list[Cue], start_s: float, end_s: float) -> list[Cue]:
    """`cues` (times relative to a chapter's start) moved to a chapter spanning start_s..end_s in the book, clamped
    into that span; a cue left with no duration is dropped."""
    low, high = math.ceil(start_s * 1000 - 1e-6), math.floor(end_s * 1000 + 1e-6)
    offset = start_s * 1000
    shifted = []
    for cue in cues:
        start = min(max(round(offset + cue.start_ms), low), high)
        end = min(max(round(offset + cue.end_ms), low), high)
        if end > start:
            shifted.append(Cue(start, end, cue.text))
    return shifted


def _stamp(millis: int, separator: str) -> str:
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def to_srt(cues: list[Cue]) -> str:
    """SubRip: numbered from 1, `HH:MM:SS,mmm` times."""
    return "\n".join(f"{i}\n{_stamp(c.start_ms, ',')} --> {_stamp(c.end_ms, ',')}\n{c.text}\n"
                     for i, c in enumerate(cues, 1))


def to_vtt(cues: list[Cue]) -> str:
    """WebVTT: the header, then numbered cues with `HH:MM:SS.mmm` times."""
    body = "\n".join(f"{i}\n{_stamp(c.start_ms, '.')} --> {_stamp(c.end_ms, '.')}\n{c.text}\n"
                     for i, c in enumerate(cues, 1))
    return "WEBVTT\n\n" + body
