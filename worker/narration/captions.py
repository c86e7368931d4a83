"""Captions (SubRip and WebVTT) from the chunk timings: one cue per sentence, timed by its share of the chunk."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from worker.narration.text import split_sentences

__all__ = ["Cue", "build_cues", "to_srt", "to_vtt"]

MAX_CUE_CHARS = 84  # two lines of 42, the common subtitle limit


@dataclass(frozen=True)
class Cue:
    start_s: float
    end_s: float
    text: str


def build_cues(timed_chunks: list[tuple[str, float, float]]) -> list[Cue]:
    """(display text, start, end) per chunk -> cues that tile each chunk's span in reading order."""
    cues: list[Cue] = []
    for text, start, end in timed_chunks:
        pieces = [p for s in split_sentences(text) for p in textwrap.wrap(s, MAX_CUE_CHARS)] or [text]
        total = sum(len(p) for p in pieces)
        at = start
        for i, piece in enumerate(pieces):
            stop = end if i == len(pieces) - 1 else at + (end - start) * len(piece) / total
            cues.append(Cue(round(at, 3), round(stop, 3), piece))
            at = stop
    return cues


def _stamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    return f"{hours:02d}:{minutes:02d}:{rest // 1000:02d}{separator}{rest % 1000:03d}"


def _wrap(text: str) -> str:
    return "\n".join(textwrap.wrap(text, MAX_CUE_CHARS // 2)) or text


def to_srt(cues: list[Cue]) -> str:
    return "\n".join(f"{i}\n{_stamp(c.start_s, ',')} --> {_stamp(c.end_s, ',')}\n{_wrap(c.text)}\n"
                     for i, c in enumerate(cues, 1))


def to_vtt(cues: list[Cue]) -> str:
    body = "\n".join(f"{_stamp(c.start_s, '.')} --> {_stamp(c.end_s, '.')}\n{_wrap(c.text)}\n" for c in cues)
    return "WEBVTT\n\n" + body
