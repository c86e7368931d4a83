"""A book's chapters (every delivery format, one at another rate) assembled into one M4B, read back by libraries
that are not our writer: PyAV's demuxer and decoder, and mutagen (Nero `chpl` chapters, iTunes tags, the cover);
the book's captions read back by FFmpeg's srt and webvtt demuxers."""

from __future__ import annotations

import io
import itertools
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest
import soundfile as sf
from mutagen.mp4 import MP4, MP4Cover, MP4Info

from producer.audio_formats import FORMATS, AudioEncoder
from producer.books.assembly import ChapterAudio, ChapterMark, assemble_m4b, book_captions
from producer.books.captions import parse_vtt
from producer.books.chapter_aac import encode_aac
from producer.books.pre_encode import pre_encode_chapter
from producer.errors import InvalidRequestError, StorageError
from producer.storage import LocalStorage

REPO = Path(__file__).resolve().parents[2]
RATE = 24_000
FRAME_S = 1024 / RATE  # one AAC frame at the book's rate
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
# (format, seconds, rate, tone in Hz): the second chapter is at another rate
CHAPTERS = [("wav", 1.3, RATE, 300), ("flac", 0.9, 16_000, 500), ("mp3", 1.1, RATE, 700), ("opus", 0.7, RATE, 900),
            ("aac", 0.8, RATE, 1100), ("m4a", 0.6, RATE, 1300), ("pcm", 0.5, RATE, 1500)]
VTT = textwrap.dedent("""\
    WEBVTT - chapter captions
    Kind: captions

    NOTE a comment,
    over two lines

    intro
    00:00.100 --> 00:00.400 align:start
    First line
    second line

    00:00:00.450 --> 00:00:05.000
    Runs past the chapter's end
    """).replace("\n", "\r\n")


def _tone(seconds: float, rate: int, hz: float) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _write(path: Path, fmt: str, audio: np.ndarray, rate: int) -> None:
    if fmt in ("wav", "flac"):
        sf.write(path, audio, rate, subtype="PCM_16")
        return
    with path.open("w+b") as sink, AudioEncoder.open(fmt, rate, sink) as encoder:
        encoder.write(audio)


def _chapter(tmp: Path, index: int, fmt: str, seconds: float, rate: int, hz: float) -> ChapterAudio:
    path = tmp / f"chapter{index}.{FORMATS[fmt].extension}"
    _write(path, fmt, _tone(seconds, rate, hz), rate)
    vtt = VTT if index % 2 == 0 else None  # every other chapter has captions
    return ChapterAudio(f"Chapter {index + 1}: {fmt}", path, vtt, rate if fmt == "pcm" else None)


@pytest.fixture(scope="module")
def book(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[ChapterAudio], list[ChapterMark], Path]:
    tmp = tmp_path_factory.mktemp("book")
    chapters = [_chapter(tmp, i, *spec) for i, spec in enumerate(CHAPTERS)]
    out = tmp / "book.m4b"
    marks = assemble_m4b(chapters, out, title="The Book", author="A. Writer", cover=PNG, gap_s=0.5)
    return chapters, marks, out


def _decoded(out: Path) -> tuple[np.ndarray, int]:
    with av.open(str(out)) as container:
        frames = [f.to_ndarray().reshape(-1) for f in container.decode(audio=0)]
        return np.concatenate(frames), container.streams.audio[0].codec_context.sample_rate


def test_the_marks_tile_the_book_and_match_the_chapters(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    chapters, marks, _ = book
    assert [m.index for m in marks] == list(range(len(CHAPTERS)))
    assert [m.title for m in marks] == [c.title for c in chapters]
    assert marks[0].start_s == 0
    for mark, after in itertools.pairwise(marks):
        assert mark.end_s == after.start_s
    for mark, (fmt, seconds, _, _) in zip(marks, CHAPTERS, strict=True):
        assert mark.samples == round((mark.end_s - mark.start_s) * RATE)
        gap = 0.5 if mark.index < len(CHAPTERS) - 1 else 0.0
        files = 2 if gap else 1  # the chapter's AAC, then the gap's: each adds its priming and pads to a frame
        extra = mark.end_s - mark.start_s - seconds - gap  # lossy chapters decode their padding and delay too
        assert files * FRAME_S - 1 / RATE <= extra <= files * 2 * FRAME_S + FORMATS[fmt].slack_s, (fmt, extra)
        assert mark.samples % 1024 == 0 and mark.audio_offset_s == FRAME_S  # FFmpeg's AAC primes one frame


def test_pyav_reads_the_chapters_and_the_whole_length(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    _, marks, out = book
    with av.open(str(out)) as container:
        chapters = container.chapters()
        stream = container.streams.audio[0]
        assert (stream.codec_context.name, stream.codec_context.channels) == ("aac", 1)
        assert 0 < (stream.bit_rate or 0) <= 80_000  # 64 kb/s at most: tones and silence take fewer bits
        assert container.metadata["major_brand"].strip() == "M4B"
    assert [c["metadata"]["title"] for c in chapters] == [m.title for m in marks]
    for chapter, mark in zip(chapters, marks, strict=True):
        time_base = chapter["time_base"]
        assert time_base is not None
        assert abs(float(chapter["start"] * time_base) - mark.start_s) <= FRAME_S
        assert abs(float(chapter["end"] * time_base) - mark.end_s) <= FRAME_S
    audio, rate = _decoded(out)
    assert rate == RATE  # the first chapter's
    assert len(audio) == marks[-1].samples + round(marks[-1].start_s * RATE)  # every frame of every chapter


def test_each_chapter_sounds_where_its_mark_says(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    _, marks, out = book
    audio, _ = _decoded(out)
    for mark, (_, seconds, _, hz) in zip(marks, CHAPTERS, strict=True):
        middle = round((mark.start_s + seconds / 2) * RATE)
        window = audio[middle - 2048: middle + 2048] * np.hanning(4096)
        peak = np.argmax(np.abs(np.fft.rfft(window))) * RATE / 4096
        assert abs(peak - hz) < 2 * RATE / 4096, (mark.title, peak)
        if mark.index < len(marks) - 1:  # the gap is silent
            gap = audio[round((mark.end_s - 0.35) * RATE): round((mark.end_s - 0.1) * RATE)]
            assert np.sqrt(np.mean(gap ** 2)) < 0.01, mark.title
    flac = marks[1]  # a lossless chapter's sound begins its priming after its mark, after the first chapter's silence
    onset = round(flac.start_s * RATE) - 2048 + np.argmax(np.abs(audio[round(flac.start_s * RATE) - 2048:]) > 0.1)
    assert abs(onset / RATE - (flac.start_s + flac.audio_offset_s)) <= 0.002


def test_mutagen_reads_the_chapters_tags_and_cover(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    _, marks, out = book
    mp4 = MP4(out)
    assert mp4.chapters is not None  # Nero chpl
    read = list(mp4.chapters)
    assert [c.title for c in read] == [m.title for m in marks]
    for chapter, mark in zip(read, marks, strict=True):
        assert abs(chapter.start - mark.start_s) <= FRAME_S
    assert abs(cast(MP4Info, mp4.info).length - marks[-1].end_s) <= 1 / RATE
    tags = mp4.tags
    assert tags is not None
    assert tags["©nam"] == ["The Book"] and tags["©alb"] == ["The Book"]
    assert tags["©ART"] == ["A. Writer"] and tags["aART"] == ["A. Writer"]
    assert tags["©gen"] == ["Audiobook"] and tags["stik"] == [2]
    (cover,) = tags["covr"]
    assert bytes(cover) == PNG and cover.imageformat == MP4Cover.FORMAT_PNG


def _demux_captions(text: str, fmt: str) -> list[tuple[int, int, str]]:
    """FFmpeg's own reading of a caption file: (start ms, end ms, text) per cue."""
    with av.open(io.BytesIO(text.encode()), "r", format=fmt) as container:
        stream = container.streams.subtitles[0]
        return [(p.pts or 0, (p.pts or 0) + (p.duration or 0), bytes(p).decode())
                for p in container.demux(stream) if p.size]


def test_book_captions_are_shifted_into_their_chapters(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    chapters, marks, _ = book
    srt, vtt = book_captions(chapters, marks)
    captioned = [m for m, c in zip(marks, chapters, strict=True) if c.vtt]
    assert len(captioned) == 4
    expected = []
    for mark in captioned:
        start, end = round((mark.start_s + mark.audio_offset_s) * 1000), int(mark.end_s * 1000)
        expected += [(start + 100, start + 400, "First line\nsecond line"),
                     (start + 450, min(start + 5000, end), "Runs past the chapter's end")]
    for fmt, text in (("srt", srt), ("webvtt", vtt)):
        cues = _demux_captions(text, fmt)
        assert len(cues) == len(expected)
        for (start, end, body), (want_start, want_end, want_body) in zip(cues, expected, strict=True):
            assert abs(start - want_start) <= 1 and abs(end - want_end) <= 1 and body == want_body
    for cue, mark in zip(parse_vtt(vtt), [m for m in captioned for _ in range(2)], strict=True):
        assert mark.start_s * 1000 - 1e-6 <= cue.start_ms < cue.end_ms <= mark.end_s * 1000 + 1e-6
    assert vtt.startswith("WEBVTT\n\n1\n")
    stamp = r"\d\d:\d\d:\d\d{}\d\d\d"
    assert len(re.findall(rf"(?m)^{stamp.format(',')} --> {stamp.format(',')}$", srt)) == len(expected)
    assert len(re.findall(rf"(?m)^{stamp.format('.')} --> {stamp.format('.')}$", vtt)) == len(expected)
    assert [int(n) for n in re.findall(r"(?m)^(\d+)$", srt)] == list(range(1, len(expected) + 1))


def test_captions_need_no_captioned_chapter(book: tuple[list[ChapterAudio], list[ChapterMark], Path]):
    chapters, marks, _ = book
    bare = [ChapterAudio(c.title, c.audio, None, c.sample_rate) for c in chapters]
    assert book_captions(bare, marks) == ("", "WEBVTT\n\n")
    with pytest.raises(ValueError, match="marks"):
        book_captions(chapters[:2], marks)


def test_vtt_is_read_robustly() -> None:
    text = ("\ufeffWEBVTT\n\nSTYLE\n::cue { color: red }\n\nNOTE 00:00:01.000 --> 00:00:02.000 is no cue\n\n"
            "1:02:03.004 --> 1:02:04.000 line:0\nOne\n  two\n\n\n\nid-2\n00:05.000 --> 00:06.000\nThree\n\n"
            "00:07.000 --> 00:07.000\nNo duration\n")
    cues = parse_vtt(text)
    assert [(c.start_ms, c.end_ms, c.text) for c in cues] == [(3_723_004, 3_724_000, "One\n  two"),
                                                               (5_000, 6_000, "Three")]
    with pytest.raises(ValueError, match="not a WebVTT cue timing"):
        parse_vtt("WEBVTT\n\n00:01 --> 00:02\nBad\n")


def test_an_undecodable_chapter_is_named(tmp_path: Path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, _tone(0.3, RATE, 440), RATE)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00not audio at all" * 200)
    out = tmp_path / "book.m4b"
    chapters = [ChapterAudio("Opening", good), ChapterAudio("The Storm", junk)]
    with pytest.raises(StorageError, match=r"chapter 1 \('The Storm'\).*junk\.mp3"):
        assemble_m4b(chapters, out, title="Broken")
    assert not out.exists()
    with pytest.raises(StorageError, match=r"chapter 0 \('Gone'\)"):
        assemble_m4b([ChapterAudio("Gone", tmp_path / "missing.wav")], out, title="Broken")
    raw = tmp_path / "raw.pcm"
    raw.write_bytes(bytes(4800))
    with pytest.raises(InvalidRequestError, match="sample_rate"):
        assemble_m4b([ChapterAudio("Raw", raw)], out, title="Raw")
    with pytest.raises(InvalidRequestError, match="JPEG or PNG"):
        assemble_m4b([ChapterAudio("Opening", good)], out, title="Cover", cover=b"GIF89a...")
    with pytest.raises(ValueError, match="at least one chapter"):
        assemble_m4b([], out, title="Empty")


def test_a_single_chapter_has_no_gap_and_no_cover_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "only.wav"
    sf.write(path, _tone(0.75, 44_100, 440), 44_100, subtype="PCM_16")
    out = tmp_path / "one.m4b"
    (mark,) = assemble_m4b([ChapterAudio("Only", path)], out, title="Short", gap_s=3.0)
    assert mark.start_s == 0.0 and mark.samples == 34 * 1024  # 0.75 s, its priming and its padding: no gap
    assert mark.end_s == mark.samples / 44_100
    mp4 = MP4(out)
    assert mp4.tags is not None and "covr" not in mp4.tags and "©ART" not in mp4.tags
    assert mp4.info.sample_rate == 44_100


MEMORY_PROBE = """
import resource, sys
from pathlib import Path
import av, mutagen.mp4, numpy
from producer.books.assembly import ChapterAudio, assemble_m4b
paths = [Path(p) for p in sys.argv[2:]]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
marks = assemble_m4b([ChapterAudio(p.stem, p) for p in paths], Path(sys.argv[1]), title="Long")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, marks[-1].end_s)
"""


def test_memory_stays_flat_for_a_long_book(tmp_path: Path) -> None:
    """Three 10-minute chapters: 173 MB of float32 once decoded, 58 MB for any one chapter; the assembly's peak
    memory grows by far less than one chapter would take (about 17 MB when this was written)."""
    paths, minute = [], 60 * RATE
    for i in range(3):
        paths.append(tmp_path / f"long{i}.wav")
        with sf.SoundFile(paths[-1], "w", RATE, 1, "PCM_16") as f:
            for _ in range(10):
                f.write(_tone(60, RATE, 200 + 100 * i))
    assert 3 * 10 * minute * 4 > 170e6
    out = tmp_path / "long.m4b"
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(out), *map(str, paths)],
                           cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                           check=True, timeout=120)
    growth_mb, end_s = map(float, probe.stdout.split())
    assert 0 < end_s - (3 * 600 + 2 * 1.0) < 5 * 2 * 1024 / RATE  # five AAC files: their primings and paddings
    assert growth_mb < 40, f"peak RSS grew by {growth_mb:.0f} MB"


def _packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        return [bytes(p) for p in container.demux(audio=0) if p.size]


def test_a_pre_encoded_chapter_is_copied_packet_for_packet_and_its_narration_not_read(tmp_path: Path) -> None:
    narrations = [tmp_path / "one.wav", tmp_path / "two.wav"]
    for path, hz in zip(narrations, (300, 600), strict=True):
        sf.write(path, _tone(1.2, RATE, hz), RATE, subtype="PCM_16")
    aacs = [encode_aac(path.stem, path, tmp_path / f"{path.stem}.m4a") for path in narrations]
    for path in narrations:
        path.unlink()  # only the AAC is there
    out = tmp_path / "book.m4b"
    marks = assemble_m4b([ChapterAudio(p.stem, p, aac=a.path) for p, a in zip(narrations, aacs, strict=True)], out,
                         title="Copied", gap_s=0.5)
    book = _packets(out)
    first, second = _packets(aacs[0].path), _packets(aacs[1].path)
    assert book[:len(first)] == first and book[-len(second):] == second  # not one bit encoded again
    assert marks[1].start_s == (len(book) - len(second)) * FRAME_S


def test_a_pre_encoded_chapter_at_another_rate_or_damaged_is_encoded_again(tmp_path: Path) -> None:
    chapters = []
    for index, (hz, aac_at) in enumerate([(300, None), (600, 16_000), (900, "junk")]):
        narration = tmp_path / f"c{index}.wav"
        sf.write(narration, _tone(1.0, RATE, hz), RATE, subtype="PCM_16")
        aac = tmp_path / f"c{index}.m4a"
        if aac_at == "junk":
            aac.write_bytes(b"\x00\x00\x00\x18ftypM4A " + bytes(200))
        elif aac_at:
            encode_aac("other rate", narration, aac, rate=int(aac_at))
        chapters.append(ChapterAudio(f"C{index}", narration, aac=aac if aac_at else None))
    out = tmp_path / "book.m4b"
    marks = assemble_m4b(chapters, out, title="Mixed", gap_s=0.5)
    audio, rate = _decoded(out)
    assert rate == RATE
    for mark, hz in zip(marks, (300, 600, 900), strict=True):
        middle = round((mark.start_s + mark.audio_offset_s + 0.5) * RATE)
        peak = np.argmax(np.abs(np.fft.rfft(audio[middle - 2048: middle + 2048] * np.hanning(4096)))) * RATE / 4096
        assert abs(peak - hz) < 2 * RATE / 4096, (mark.title, peak)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "pcm"])
def test_a_narrated_chapter_is_encoded_ahead_from_its_own_format(fmt: str, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "objects")
    narration = tmp_path / f"narration.{FORMATS[fmt].extension}"
    _write(narration, fmt, _tone(1.0, RATE, 440), RATE)
    key = storage.key_for("job", narration.name)
    storage.put_file(key, narration, FORMATS[fmt].content_type)
    result = {"key": key, "format": fmt, "sample_rate": RATE, "sha256": "ab" * 32, "duration_s": 1.0}
    pre_encode_chapter(storage, "books/b/aac/0000.m4a", 0, result)
    aac = tmp_path / "chapter.m4a"
    assert storage.download_if_exists("books/b/aac/0000.m4a", aac)
    audio, rate = _decoded(aac)
    assert rate == RATE
    spectrum = np.abs(np.fft.rfft(audio[4096:8192] * np.hanning(4096)))
    assert abs(np.argmax(spectrum) * RATE / 4096 - 440) < 2 * RATE / 4096
    assert spectrum.max() > 50 * np.median(spectrum)  # a clean tone, not bytes of another format read as samples
