"""A book's finished chapters, one narration file each, assembled into one M4B audiobook with a chapter marker per
chapter, and the chapters' captions into the book's captions. Pure: local files in, a local file out.

Nothing is encoded here but what is missing: every chapter comes as AAC at the book's rate (the first chapter's),
made while the book was being narrated (producer/books/pre_encode.py) or, when it is missing or at another rate,
encoded now (producer/books/chapter_aac.py). The chapters' AAC packets, with `gap_s` of encoded silence after every
chapter but the last, are copied one by one into FFmpeg's `ipod` muxer (branded M4B), so memory stays flat however
long the book is and an hour of audio takes well under a second. A chapter spans its packets and the gap after it:
the marks tile the book with no holes, the last one ends with the audio, and each chapter's speech begins its AAC
priming (one frame, `audio_offset_s`) after its mark. FFmpeg writes the chapter markers (a QuickTime chapter track,
and a Nero `chpl` box) from the chapter list it is given before the first packet. The cover is added afterwards with
mutagen (`covr`).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

from producer.books.captions import parse_vtt, shift_cues, to_srt, to_vtt
from producer.books.chapter_aac import AAC_FRAME, AacFile, aac_rate, encode_aac, input_rate, read_aac, silence_aac
from producer.errors import InvalidRequestError, StorageError

if TYPE_CHECKING:
    from av.container import Chapter

__all__ = ["ChapterAudio", "ChapterMark", "assemble_m4b", "book_captions"]

BRAND = "M4B "  # the ftyp major brand Apple's players file under audiobooks
MEDIA_KIND_AUDIOBOOK = "2"  # iTunes `stik`
_MUXER_OPTIONS = {"fflags": "+bitexact", "brand": BRAND}


@dataclass(frozen=True)
class ChapterAudio:
    """One chapter as narrated: its title, its audio file and (optionally) its WebVTT captions, times relative to the
    chapter's start. `sample_rate` is set for raw pcm (s16le mono) only: the file is then read as raw pcm. `aac` is
    the same audio already encoded to AAC (an MP4 file): used as it is when it is at the book's rate; `audio` is then
    not read and need not exist."""

    title: str
    audio: Path
    vtt: str | None = None
    sample_rate: int | None = None
    aac: Path | None = None


@dataclass(frozen=True)
class ChapterMark:
    """Where a chapter lies in the book (index: its place in the chapter list, from 0). start_s..end_s includes the
    silence after it; `samples` is that span's length in samples at the book's rate; the chapter's speech begins
    `audio_offset_s` after start_s (its AAC priming)."""

    index: int
    title: str
    start_s: float
    end_s: float
    samples: int
    audio_offset_s: float = 0.0


def _what(index: int, chapter: ChapterAudio) -> str:
    return f"chapter {index} ({chapter.title!r})"


def _usable_aac(index: int, chapter: ChapterAudio, rate: int) -> AacFile | None:
    if chapter.aac is None or not chapter.aac.exists():
        return None
    try:
        found = read_aac(_what(index, chapter), chapter.aac)
    except StorageError:
        return None  # a damaged pre-encoded file: encoded again from the narration
    return found if found.rate == rate else None


def _book_rate(chapter: ChapterAudio) -> int:
    """The first chapter's rate: that of its AAC when there is one, else the next AAC rate up from its audio's."""
    if chapter.aac is not None and chapter.aac.exists():
        try:
            return read_aac(_what(0, chapter), chapter.aac).rate
        except StorageError:
            pass
    return aac_rate(input_rate(_what(0, chapter), chapter.audio, chapter.sample_rate))


def _chapter_files(chapters: list[ChapterAudio], rate: int, gap: int, folder: Path) -> list[list[AacFile]]:
    """Each chapter's AAC files in order: its own (pre-encoded, else encoded now), then the gap (all but the last)."""
    silence = silence_aac(folder / "gap.m4a", rate, gap) if gap and len(chapters) > 1 else None
    files = []
    for index, chapter in enumerate(chapters):
        own = _usable_aac(index, chapter, rate) or encode_aac(
            _what(index, chapter), chapter.audio, folder / f"{index:04d}.m4a", rate, chapter.sample_rate)
        files.append([own] + ([silence] if silence and index < len(chapters) - 1 else []))
    return files


def _marks(chapters: list[ChapterAudio], files: list[list[AacFile]], rate: int) -> list[ChapterMark]:
    marks, at = [], 0
    for index, (chapter, parts) in enumerate(zip(chapters, files, strict=True)):
        samples = sum(part.packets for part in parts) * AAC_FRAME
        marks.append(ChapterMark(index, chapter.title, at / rate, (at + samples) / rate, samples,
                                 parts[0].priming / rate))
        at += samples
    return marks


def _chapter_list(marks: list[ChapterMark], rate: int) -> list[Chapter]:
    return [{"id": m.index, "start": round(m.start_s * rate), "end": round(m.end_s * rate),
             "time_base": Fraction(1, rate), "metadata": {"title": m.title}} for m in marks]


def _tags(title: str, author: str | None) -> dict[str, str]:
    tags = {"title": title, "album": title, "genre": "Audiobook", "media_type": MEDIA_KIND_AUDIOBOOK}
    if author:
        tags |= {"artist": author, "album_artist": author}
    return tags


def _remux(out: Path, files: list[AacFile], marks: list[ChapterMark], rate: int, tags: dict[str, str]) -> None:
    """Every file's AAC packets, in order, into one M4B; each packet is one AAC frame long on the book's timeline."""
    import av

    with av.open(str(out), "w", format="ipod", container_options=_MUXER_OPTIONS) as book:
        book.metadata.update(tags)
        book.set_chapters(_chapter_list(marks, rate))
        stream, at = None, 0
        for file in files:
            with av.open(str(file.path)) as source:
                audio = source.streams.audio[0]
                stream = stream or book.add_stream_from_template(audio)
                for packet in source.demux(audio):
                    if not packet.size:
                        continue
                    packet.pts = packet.dts = at
                    packet.duration, packet.time_base, packet.stream = AAC_FRAME, Fraction(1, rate), stream
                    book.mux(packet)
                    at += AAC_FRAME


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
                 cover: bytes | None = None, cover_type: str | None = None, gap_s: float = 1.0,
                 rate: int | None = None) -> list[ChapterMark]:
    """Write the chapters, in order, to `out` as one M4B (AAC, 64 kb/s, mono, at `rate`: by default the first
    chapter's) with a chapter marker each, tags and the cover (JPEG or PNG); the chapters' marks in the book. A chapter
    that cannot be read or decoded: StorageError naming it (nothing is left at `out`)."""
    if not chapters:
        raise ValueError("a book needs at least one chapter")
    if gap_s < 0:
        raise ValueError(f"gap_s must not be negative, not {gap_s}")
    image_format = _cover_format(cover, cover_type) if cover else None
    rate = rate or _book_rate(chapters[0])
    try:
        with tempfile.TemporaryDirectory(prefix="echoforge-aac-", dir=out.parent) as tmp:
            files = _chapter_files(chapters, rate, round(gap_s * rate), Path(tmp))
            marks = _marks(chapters, files, rate)
            _remux(out, [file for parts in files for file in parts], marks, rate, _tags(title, author))
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
                cues += shift_cues(parse_vtt(chapter.vtt), mark.start_s + mark.audio_offset_s, mark.end_s)
            except ValueError as error:
                raise ValueError(f"chapter {mark.index} ({chapter.title!r}): bad captions: {error}") from error
    return to_srt(cues), to_vtt(cues)
