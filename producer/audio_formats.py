"""The audio formats a narration can be delivered in, and one encoder for all of them (PyAV: FFmpeg's libraries,
bundled in its wheels; no ffmpeg binary is needed).

`AudioEncoder` writes float32 mono samples, any number of pieces, to a binary sink: a file on disk (a whole
narration) or any object with `write` (a stream that an HTTP response drains). Every format but m4a streams to a
sink that cannot seek: wav then carries 0xFFFFFFFF as its RIFF and data sizes (as streaming servers do; readers take
"until the end"), flac's STREAMINFO has no total length, mp3 has no LAME tag (so a decoder keeps the encoder delay),
and Ogg, ADTS and raw pcm need nothing written back. m4a writes its index at the end and is refused for such a sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO, Literal

import numpy as np

from producer.errors import InvalidRequestError

if TYPE_CHECKING:
    from av.audio.stream import AudioStream
    from av.container import OutputContainer

__all__ = ["FORMATS", "AudioEncoder", "AudioFormat", "FormatName", "audio_format", "is_seekable"]

FormatName = Literal["wav", "flac", "mp3", "opus", "aac", "m4a", "pcm"]


@dataclass(frozen=True)
class AudioFormat:
    """One delivery format: how it is muxed and encoded, and how it is served."""

    name: str
    container: str  # FFmpeg's muxer
    codec: str  # FFmpeg's encoder
    sample_format: str  # what the encoder takes (PyAV converts the float32 input)
    content_type: str
    extension: str
    sample_rate: int | None = None  # the encoded rate; None: the input's (24 kHz for CSM)
    bit_rate: int | None = None  # lossy formats only
    lossless: bool = False
    streamable: bool = True  # False: the muxer seeks back at the end, so the sink must be a seekable file
    # How much longer than the samples written a decoder's output may be, at 24 kHz: up to one codec frame of padding,
    # plus the encoder delay where the container cannot say it (ADTS always, mp3 when streamed without a LAME tag).
    slack_s: float = 0.0


FORMATS: dict[str, AudioFormat] = {f.name: f for f in (
    AudioFormat("wav", "wav", "pcm_s16le", "s16", "audio/wav", "wav", lossless=True),
    AudioFormat("flac", "flac", "flac", "s16", "audio/flac", "flac", lossless=True),
    AudioFormat("mp3", "mp3", "libmp3lame", "fltp", "audio/mpeg", "mp3", bit_rate=64_000,
                slack_s=(576 + 1152) / 24_000),
    AudioFormat("opus", "ogg", "libopus", "flt", "audio/ogg", "opus", sample_rate=48_000, bit_rate=48_000,
                slack_s=960 / 48_000),
    AudioFormat("aac", "adts", "aac", "fltp", "audio/aac", "aac", bit_rate=64_000, slack_s=2 * 1024 / 24_000),
    AudioFormat("m4a", "ipod", "aac", "fltp", "audio/mp4", "m4a", bit_rate=64_000, streamable=False,
                slack_s=1024 / 24_000),
    AudioFormat("pcm", "s16le", "pcm_s16le", "s16", "audio/pcm", "pcm", lossless=True),
)}

# bitexact: no encoder version in the file (the same audio gives the same bytes); flush_packets: every muxed packet
# reaches the sink at once (a streamed response is not held back by FFmpeg's I/O buffer).
_CONTAINER_OPTIONS = {"fflags": "+bitexact", "flush_packets": "1"}
_CODEC_OPTIONS = {"flags": "+bitexact"}


def audio_format(name: str) -> AudioFormat:
    """The format called `name`; InvalidRequestError naming the formats there are otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InvalidRequestError(f"unknown audio format {name!r}; choose one of {', '.join(FORMATS)}") from None


def is_seekable(sink: BinaryIO) -> bool:
    """Whether FFmpeg may seek in `sink` (PyAV's rule: it has seek and tell, and seekable() if any says so)."""
    seekable = getattr(sink, "seekable", None)
    has_seek = callable(getattr(sink, "seek", None)) and callable(getattr(sink, "tell", None))
    return has_seek and (seekable is None or bool(seekable()))


class AudioEncoder:
    """Encodes float32 mono samples into one format, writing to a binary sink as it goes; memory stays flat.

    Use `AudioEncoder.open(...)`, then `write` any number of times, then `close` (or use it as a context manager).
    The sink is never closed here: it belongs to the caller.
    """

    def __init__(self, spec: AudioFormat, container: OutputContainer, stream: AudioStream, sample_rate: int) -> None:
        self.spec, self.sample_rate = spec, sample_rate
        self._container, self._stream = container, stream
        self.samples_written = 0
        self._closed = False

    @classmethod
    def open(cls, fmt: str, sample_rate: int, sink: BinaryIO,
             container_options: dict[str, str] | None = None) -> AudioEncoder:
        """An encoder for `fmt` taking samples at `sample_rate`, writing to `sink` (needs only `write`, except m4a);
        `container_options` add to the muxer's own (an M4B's brand, say)."""
        import av

        spec = audio_format(fmt)
        if not spec.streamable and not is_seekable(sink):
            raise InvalidRequestError(f"{spec.name} cannot be streamed: it writes its index at the end, so it needs "
                                      "a seekable file; stream aac (ADTS) instead")
        options = _CONTAINER_OPTIONS | (container_options or {})
        container = av.open(sink, "w", format=spec.container, container_options=options)
        try:
            stream = container.add_stream(spec.codec, rate=spec.sample_rate or sample_rate, options=_CODEC_OPTIONS)
            if not isinstance(stream, av.AudioStream):
                raise TypeError(f"{spec.codec} is not an audio encoder")
            context = stream.codec_context
            context.layout, context.format = "mono", spec.sample_format
            if spec.bit_rate:
                context.bit_rate = spec.bit_rate
        except Exception:
            container.close()
            raise
        return cls(spec, container, stream, sample_rate)

    @property
    def container(self) -> OutputContainer:
        """The muxer, for what must be set before the first `write`: its tags (`metadata`) and chapters."""
        return self._container

    def write(self, samples: np.ndarray) -> None:
        """Encode more samples (float32 in [-1, 1], mono); encoded bytes go to the sink as packets complete."""
        import av

        if self._closed:
            raise ValueError("the encoder is closed")
        audio = np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1)
        if not audio.size:
            return
        frame = av.AudioFrame.from_ndarray(audio, format="flt", layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self.samples_written
        frame.time_base = Fraction(1, self.sample_rate)
        self._container.mux(self._stream.encode(frame))
        self.samples_written += audio.shape[1]

    def close(self) -> None:
        """Flush the encoder and finish the container (headers written back where the sink can seek)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._container.mux(self._stream.encode(None))
        finally:
            self._container.close()

    def abort(self) -> None:
        """Stop without flushing (after an error); what reached the sink is incomplete."""
        if not self._closed:
            self._closed = True
            self._container.close()

    def __enter__(self) -> AudioEncoder:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
