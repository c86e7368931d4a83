"""A book's finished chapters, one narration file each, assembled into one M4B audiobook with a chapter marker per
chapter, and the chapters' captions into the book's captions. Pure: local files in, a local file out.

Every chapter is decoded frame by frame (PyAV), resampled to one rate (the first chapter's; mono, float) and encoded
to AAC by the repository's m4a `AudioEncoder` (FFmpeg's `ipod` muxer, branded M4B), so memory stays flat however long
the book is. Chapters are decoded twice: once to count their samples, since FFmpeg writes the chapter markers (a
QuickTime chapter track, and a Nero `chpl` box) from the chapter list it is given before the first packet, and once to
encode them. `gap_s` of silence follows every chapter but the last and belongs to the chapter before it: the marks
tile the book with no holes, and the last one ends with the audio. The cover is added afterwards with mutagen (`covr`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from producer.audio_formats import FORMATS, AudioEncoder
from producer.books.captions import parse_vtt, shift_cues, to_srt, to_vtt
from producer.errors import InvalidRequestError, StorageError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import Chapter, InputContainer

__all__ = ["ChapterAudio", "ChapterMark", "assemble_m4b", "book_captions"]

# The rates an AAC stream can signal; a first chapter at another rate is resampled to the next one up.
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
BRAND = "M4B "  # the ftyp major brand Apple's players file under audiobooks
SILENCE_BLOCK = 4096  # samples of gap written at a time
MEDIA_KIND_AUDIOBOOK = "2"  # iTunes `stik`


@dataclass(frozen=True)
class ChapterAudio:
    """One chapter as narrated: its title, its audio file and (optionally) its WebVTT captions, times relative to the
    chapter's start. `sample_rate` is set for raw pcm (s16le mono) only: the file is then read as raw pcm."""

    title: str
    audio: Path
    vtt: str | None = None
    sample_rate: int | None = None


@dataclass(frozen=True)
class ChapterMark:
    """Where a chapter lies in the book (index: its place in the chapter list, from 0). start_s..end_s includes the
    silence after it; `samples` is that span's length in samples at the book's rate."""

    index: int
    title: str
    start_s: float
    end_s: float
    samples: int


def _failed(index: int, chapter: ChapterAudio, error: Exception) -> StorageError:
    return StorageError(f"chapter {index} ({chapter.title!r}): cannot decode {chapter.audio.name}: {error}")


@contextmanager
def _opened(index: int, chapter: ChapterAudio) -> Iterator[tuple[InputContainer, AudioStream]]:
    """The chapter's file opened for decoding, and its first audio stream."""
    import av

    if chapter.sample_rate is None and chapter.audio.suffix == f".{FORMATS['pcm'].extension}":
        raise InvalidRequestError(f"chapter {index} ({chapter.title!r}): raw pcm needs its sample_rate")
    raw = {} if chapter.sample_rate is None else {
        "format": "s16le", "options": {"sample_rate": str(chapter.sample_rate), "ch_layout": "mono"}}
    try:
        container = av.open(str(chapter.audio), "r", **raw)  # type: ignore[call-overload]
    except (OSError, av.FFmpegError) as error:
        raise _failed(index, chapter, error) from error
    try:
        if not container.streams.audio:
            raise _failed(index, chapter, ValueError("no audio stream"))
        yield container, container.streams.audio[0]
    finally:
        container.close()


def _input_rate(index: int, chapter: ChapterAudio) -> int:
    with _opened(index, chapter) as (_, stream):
        rate = stream.codec_context.sample_rate
    if not rate:
        raise _failed(index, chapter, ValueError("no sample rate"))
    return int(rate)


def _blocks(index: int, chapter: ChapterAudio, rate: int) -> Iterator[np.ndarray]:
    """The chapter's samples at `rate` (float32, mono), one decoded frame at a time."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    with _opened(index, chapter) as (container, stream):
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except (av.FFmpegError, ValueError) as error:  # ValueError: a frame the resampler was not set up for
            raise _failed(index, chapter, error) from error


def _count(index: int, chapter: ChapterAudio, rate: int) -> int:
    samples = sum(len(block) for block in _blocks(index, chapter, rate))
    if not samples:
        raise _failed(index, chapter, ValueError("no audio in it"))
    return samples


def _plan(chapters: list[ChapterAudio], rate: int, gap: int) -> list[tuple[int, int]]:
    """Each chapter's (start, end) in samples at `rate`, its gap included (all but the last)."""
    spans, at = [], 0
    for index, chapter in enumerate(chapters):
        end = at + _count(index, chapter, rate) + (gap if index < len(chapters) - 1 else 0)
        spans.append((at, end))
        at = end
    return spans


def _marks(chapters: list[ChapterAudio], spans: list[tuple[int, int]], rate: int) -> list[ChapterMark]:
    return [ChapterMark(i, c.title, start / rate, end / rate, end - start)
            for i, (c, (start, end)) in enumerate(zip(chapters, spans, strict=True))]


def _chapter_list(marks: list[ChapterMark], spans: list[tuple[int, int]], rate: int) -> list[Chapter]:
    return [{"id": m.index, "start": start, "end": end, "time_base": Fraction(1, rate), "metadata": {"title": m.title}}
            for m, (start, end) in zip(marks, spans, strict=True)]


def _tags(title: str, author: str | None) -> dict[str, str]:
    tags = {"title": title, "album": title, "genre": "Audiobook", "media_type": MEDIA_KIND_AUDIOBOOK}
    if author:
        tags |= {"artist": author, "album_artist": author}
    return tags


def _encode(encoder: AudioEncoder, chapters: list[ChapterAudio], spans: list[tuple[int, int]], gap: int) -> None:
    """Every chapter's samples, then its gap, into `encoder`; a chapter that decodes differently now is an error."""
    for index, (chapter, (_, end)) in enumerate(zip(chapters, spans, strict=True)):
        for block in _blocks(index, chapter, encoder.sample_rate):
            encoder.write(block)
        if index < len(chapters) - 1:
            for at in range(0, gap, SILENCE_BLOCK):
                encoder.write(np.zeros(min(SILENCE_BLOCK, gap - at), dtype=np.float32))
        if encoder.samples_written != end:
            raise _failed(index, chapter, ValueError("the file changed while the book was assembled"))


def _cover_format(cover: bytes, cover_type: str | None) -> int:
    """mutagen's image format for the cover: from its media type, else from its first bytes; JPEG and PNG only."""
    from mutagen.mp4 import MP4Cover

    kind = (cover_type or "").lower().removeprefix("image/")
    if kind in ("jpeg", "jpg") or (not kind and cover.startswith(b"\xff\xd8\xff")):
        return MP4Cover.FORMAT_JPEG
    if kind == "png" or (not kind and cover.startswith(b"\x89PNG\r\n\x1a\n")):
        return MP4Cover.FORMAT_PNG
    raise InvalidRequestError(f"the cover must be a JPEG or PNG image, not {cover_type or 'unrecognised bytes'}",
                              [("cover", "not a JPEG or PNG image")])


def _add_cover(out: Path, cover: bytes, image_format: int) -> None:
    from mutagen import MutagenError
    from mutagen.mp4 import MP4, MP4Cover

    try:
        book = MP4(out)
        if book.tags is None:
            book.add_tags()
        tags = book.tags  # FFmpeg wrote the others; mutagen keeps them
        if tags is not None:
            tags["covr"] = [MP4Cover(cover, imageformat=image_format)]
        book.save()
    except MutagenError as error:
        raise StorageError(f"cannot add the cover to {out.name}: {error}") from error


def assemble_m4b(chapters: list[ChapterAudio], out: Path, *, title: str, author: str | None = None,
                 cover: bytes | None = None, cover_type: str | None = None, gap_s: float = 1.0) -> list[ChapterMark]:
    """Write the chapters, in order, to `out` as one M4B (AAC, 64 kb/s, mono, the first chapter's rate) with a chapter
    marker each, tags and the cover (JPEG or PNG); the chapters' marks in the book. A chapter that cannot be read or
    decoded: StorageError naming it (nothing is left at `out`)."""
    if not chapters:
        raise ValueError("a book needs at least one chapter")
    if gap_s < 0:
        raise ValueError(f"gap_s must not be negative, not {gap_s}")
    image_format = _cover_format(cover, cover_type) if cover else None
    first = _input_rate(0, chapters[0])
    rate = next((r for r in AAC_RATES if r >= first), AAC_RATES[-1])
    gap = round(gap_s * rate)
    spans = _plan(chapters, rate, gap)
    marks = _marks(chapters, spans, rate)
    try:
        with out.open("w+b") as sink, AudioEncoder.open("m4a", rate, sink, {"brand": BRAND}) as encoder:
            encoder.container.metadata.update(_tags(title, author))
            encoder.container.set_chapters(_chapter_list(marks, spans, rate))
            _encode(encoder, chapters, spans, gap)
        if cover and image_format is not None:
            _add_cover(out, cover, image_format)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return marks


def book_captions(chapters: list[ChapterAudio], marks: list[ChapterMark]) -> tuple[str, str]:
    """The book's captions as (SubRip, WebVTT): each chapter's cues moved to its mark and kept inside it, numbered
    through the book; chapters without captions add none."""
    if len(chapters) != len(marks):
        raise ValueError(f"{len(chapters)} chapters but {len(marks)} marks")
    cues = []
    for chapter, mark in zip(chapters, marks, strict=True):
        if chapter.vtt:
            try:
                cues += shift_cues(parse_vtt(chapter.vtt), mark.start_s, mark.end_s)
            except ValueError as error:
                raise ValueError(f"chapter {mark.index} ({chapter.title!r}): bad captions: {error}") from error
    return to_srt(cues), to_vtt(cues)
