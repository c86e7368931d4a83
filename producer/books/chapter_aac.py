"""A chapter's narration as AAC, ready to be copied packet by packet into the book: decoded frame by frame (PyAV),
resampled to the book's rate (mono, float) and encoded by the repository's m4a `AudioEncoder`, so memory stays flat
however long the chapter is. The book's assembly only remuxes these files; each chapter's is made as soon as the
chapter is narrated (producer/books/pre_encode.py), while the others are still being narrated."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from producer.audio_formats import FORMATS, AudioEncoder
from producer.errors import InvalidRequestError, StorageError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import InputContainer

__all__ = ["AAC_FRAME", "AacFile", "aac_rate", "encode_aac", "input_rate", "read_aac", "silence_aac"]

# The rates an AAC stream can signal; audio at another rate is resampled to the next one up.
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024  # samples per AAC-LC packet
SILENCE_BLOCK = 4096  # samples of silence written at a time


@dataclass(frozen=True)
class AacFile:
    """An AAC file's audio stream: its rate, its packets (each decodes to AAC_FRAME samples) and its priming (the
    samples the encoder put before the audio: the first packet's negative timestamp)."""

    path: Path
    rate: int
    packets: int
    priming: int


def aac_rate(rate: int) -> int:
    return next((r for r in AAC_RATES if r >= rate), AAC_RATES[-1])


def _failed(what: str, path: Path, error: Exception) -> StorageError:
    return StorageError(f"{what}: cannot decode {path.name}: {error}")


@contextmanager
def _opened(what: str, path: Path, raw_rate: int | None) -> Iterator[tuple[InputContainer, AudioStream]]:
    """The file opened for decoding (raw s16le mono when `raw_rate` is given), and its first audio stream."""
    import av

    if raw_rate is None and path.suffix == f".{FORMATS['pcm'].extension}":
        raise InvalidRequestError(f"{what}: raw pcm needs its sample_rate")
    raw = {} if raw_rate is None else {"format": "s16le",
                                       "options": {"sample_rate": str(raw_rate), "ch_layout": "mono"}}
    try:
        container = av.open(str(path), "r", **raw)  # type: ignore[call-overload]
    except (OSError, av.FFmpegError) as error:
        raise _failed(what, path, error) from error
    try:
        if not container.streams.audio:
            raise _failed(what, path, ValueError("no audio stream"))
        yield container, container.streams.audio[0]
    finally:
        container.close()


def input_rate(what: str, path: Path, raw_rate: int | None = None) -> int:
    with _opened(what, path, raw_rate) as (_, stream):
        rate = stream.codec_context.sample_rate
    if not rate:
        raise _failed(what, path, ValueError("no sample rate"))
    return int(rate)


def _blocks(what: str, path: Path, raw_rate: int | None, rate: int) -> Iterator[np.ndarray]:
    """The file's samples at `rate` (float32, mono), one decoded frame at a time."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
    with _opened(what, path, raw_rate) as (container, stream):
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    yield out.to_ndarray().reshape(-1)
            for out in resampler.resample(None):
                yield out.to_ndarray().reshape(-1)
        except (av.FFmpegError, ValueError) as error:  # ValueError: a frame the resampler was not set up for
            raise _failed(what, path, error) from error


def _encoded(out: Path, rate: int, blocks: Iterator[np.ndarray], what: str) -> AacFile:
    try:
        with out.open("w+b") as sink, AudioEncoder.open("m4a", rate, sink) as encoder:
            for block in blocks:
                encoder.write(block)
            written = encoder.samples_written
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    if not written:
        out.unlink(missing_ok=True)
        raise StorageError(f"{what}: no audio in it")
    return read_aac(what, out)


def encode_aac(what: str, path: Path, out: Path, rate: int | None = None, raw_rate: int | None = None) -> AacFile:
    """`path` (any format FFmpeg reads; raw s16le mono at `raw_rate`) encoded to AAC in `out`, at `rate` (default:
    its own rate, or the next AAC rate up). `what` names the file in errors (a chapter, say)."""
    rate = rate or aac_rate(input_rate(what, path, raw_rate))
    return _encoded(out, rate, _blocks(what, path, raw_rate, rate), what)


def silence_aac(out: Path, rate: int, samples: int) -> AacFile:
    """`samples` of silence encoded to AAC in `out` (the gap between chapters)."""
    blocks = (np.zeros(min(SILENCE_BLOCK, samples - at), dtype=np.float32) for at in range(0, samples, SILENCE_BLOCK))
    return _encoded(out, rate, blocks, "the gap between chapters")


def read_aac(what: str, path: Path) -> AacFile:
    """The AAC stream of `path` (its packets counted, nothing decoded); StorageError if it is not mono AAC."""
    import av

    with _opened(what, path, None) as (container, stream):
        context = stream.codec_context
        if context.name != "aac" or context.channels != 1 or not context.sample_rate:
            raise _failed(what, path, ValueError(f"not mono AAC ({context.name}, {context.channels} channels)"))
        packets, first, time_base = 0, None, stream.time_base
        try:
            for packet in container.demux(stream):
                if packet.size:
                    first = packet.pts if first is None else first
                    packets += 1
        except av.FFmpegError as error:
            raise _failed(what, path, error) from error
    if not packets:
        raise _failed(what, path, ValueError("no audio in it"))
    rate = int(context.sample_rate)
    priming = -round((first or 0) * time_base * rate) if time_base is not None else 0
    return AacFile(path, rate, packets, max(0, priming))
