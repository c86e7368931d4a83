"""Every delivery format, encoded by our AudioEncoder and decoded back by PyAV (a library, not our code): whole files,
and streams written in small pieces to a sink that cannot seek."""

from __future__ import annotations

import io
import os
import threading
from typing import get_args

import av
import numpy as np
import pytest

from producer.audio_formats import FORMATS, AudioEncoder, AudioFormat, FormatName, audio_format
from producer.cli_args import build_parser
from producer.errors import InvalidRequestError
from producer.request import NarrationRequest

RATE = 24_000
STREAMABLE = [name for name, spec in FORMATS.items() if spec.streamable]


class PipeSink:
    """What a streaming response drains: it takes bytes and nothing else (no seek, no tell)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def received(self) -> bytes:
        return b"".join(self.parts)


def _speechlike(seconds: float) -> np.ndarray:
    """Two tones, an amplitude wobble, a short silence in the middle: 0.5 peak."""
    t = np.arange(int(seconds * RATE)) / RATE
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)) * (0.6 + 0.4 * np.sin(3 * t))
    audio[len(audio) // 2: len(audio) // 2 + RATE // 10] = 0.0
    return audio.astype(np.float32)


def _decode(data: bytes, spec: AudioFormat) -> tuple[np.ndarray, int]:
    """Every sample a decoder returns (float32, mono) and its rate; the container is probed, except raw pcm."""
    raw = {"format": "s16le", "options": {"sample_rate": str(RATE), "ch_layout": "mono"}} if spec.name == "pcm" else {}
    with av.open(io.BytesIO(data), **raw) as container:  # type: ignore[call-overload]
        frames = list(container.decode(audio=0))
    rate = frames[0].sample_rate
    pieces = [f.to_ndarray().reshape(-1) for f in frames]
    audio = np.concatenate(pieces)
    return (audio / 32768.0 if audio.dtype == np.int16 else audio).astype(np.float32), rate


def _encode(spec: str, audio: np.ndarray, sink: object, piece: int) -> None:
    with AudioEncoder.open(spec, RATE, sink) as encoder:  # type: ignore[arg-type]
        for start in range(0, len(audio), piece):
            encoder.write(audio[start: start + piece])


def _check_duration(decoded: np.ndarray, rate: int, written: np.ndarray, spec: AudioFormat) -> None:
    extra = len(decoded) / rate - len(written) / RATE
    assert -1 / RATE <= extra <= spec.slack_s + 1 / RATE, f"{spec.name}: decodes {extra * 1000:.1f} ms longer"


def test_the_table_is_the_one_list_of_formats() -> None:
    assert list(FORMATS) == list(get_args(FormatName))
    for name in FORMATS:
        assert build_parser().parse_args(["submit", "Hi.", "--format", name]).format == name
        assert NarrationRequest.parse({"text": "Hi.", "output_format": name}).output_format == name
    with pytest.raises(SystemExit):
        build_parser().parse_args(["submit", "Hi.", "--format", "ogg"])
    assert {f.extension for f in FORMATS.values()} == {"wav", "flac", "mp3", "opus", "aac", "m4a", "pcm"}
    assert FORMATS["pcm"].content_type == "audio/pcm" and FORMATS["mp3"].content_type == "audio/mpeg"
    with pytest.raises(InvalidRequestError, match="choose one of wav, flac, mp3"):
        audio_format("ogg")


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_format_decodes_back_to_the_same_length_and_the_lossless_ones_to_the_same_samples(name: str) -> None:
    spec, audio = FORMATS[name], _speechlike(2.5)
    sink = io.BytesIO()
    _encode(name, audio, sink, piece=7_000)
    assert not sink.closed, "the sink belongs to the caller"
    decoded, rate = _decode(sink.getvalue(), spec)
    assert rate == (spec.sample_rate or RATE)
    _check_duration(decoded, rate, audio, spec)
    if spec.lossless:
        assert len(decoded) == len(audio)
        assert np.max(np.abs(decoded - audio)) <= 1 / 32768 + 1e-6, "16-bit rounding at most"
    else:  # lossy: the same loudness, give or take the codec's padding and its error
        loudness = float(np.sqrt(np.mean(decoded**2)) / np.sqrt(np.mean(audio**2)))
        assert 0.85 < loudness < 1.1, f"{name}: {loudness:.2f} of the input's RMS"


@pytest.mark.parametrize("name", STREAMABLE)
def test_streamed_in_small_pieces_to_a_sink_that_cannot_seek_each_format_decodes(name: str) -> None:
    spec, audio = FORMATS[name], _speechlike(3.0)
    sink = PipeSink()
    with AudioEncoder.open(name, RATE, sink) as encoder:  # type: ignore[arg-type]
        for start in range(0, 2 * RATE, 480):  # 20 ms at a time, as a model streams
            encoder.write(audio[start: start + 480])
        assert sink.received(), "bytes reach the sink before the stream ends"
        for start in range(2 * RATE, len(audio), 480):
            encoder.write(audio[start: start + 480])
    data = sink.received()
    decoded, rate = _decode(data, spec)
    if name == "mp3":  # no LAME tag written back: a decoder keeps the encoder delay, within `slack_s`
        assert len(decoded) / rate > len(audio) / RATE
    _check_duration(decoded, rate, audio, spec)
    if name == "wav":  # sizes unknown while streaming: 0xFFFFFFFF ("until the end"), as streaming servers send
        assert data[4:8] == b"\xff\xff\xff\xff" and data[36:44] == b"data\xff\xff\xff\xff"
    if spec.lossless:
        assert np.max(np.abs(decoded - audio)) <= 1 / 32768 + 1e-6


def test_m4a_is_refused_for_a_sink_that_cannot_seek() -> None:
    with pytest.raises(InvalidRequestError, match=r"m4a cannot be streamed.*aac"):
        AudioEncoder.open("m4a", RATE, PipeSink())  # type: ignore[arg-type]


def test_the_same_samples_give_the_same_bytes_however_they_are_written() -> None:
    audio = _speechlike(1.0)
    for name in FORMATS:
        first, second = io.BytesIO(), io.BytesIO()
        _encode(name, audio, first, piece=RATE)
        _encode(name, audio, second, piece=1_000)
        assert first.getvalue() == second.getvalue(), name


def test_an_os_pipe_takes_a_stream_and_m4a_is_refused_there() -> None:
    read_end, write_end = os.pipe()
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(os.fdopen(read_end, "rb").read()))
    reader.start()
    with os.fdopen(write_end, "wb") as pipe:
        with pytest.raises(InvalidRequestError, match="m4a"):
            AudioEncoder.open("m4a", RATE, pipe)
        _encode("opus", _speechlike(1.0), pipe, piece=960)
    reader.join(timeout=10)
    decoded, rate = _decode(received[0], FORMATS["opus"])
    _check_duration(decoded, rate, _speechlike(1.0), FORMATS["opus"])
