"""Audio for delivery: per-chunk QA, loudness, seams, and each chunk's stored WAV (soundfile)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from worker.models.silence import SILENCE_DB, window_rms

__all__ = [
    "PARAGRAPH_PAUSE_S",
    "SENTENCE_PAUSE_S",
    "TARGET_LUFS",
    "chunk_qa",
    "decode_wav",
    "file_sha256",
    "finish_chunk",
    "wav_bytes",
]

SENTENCE_PAUSE_S = 0.25  # between chunks of one paragraph
PARAGRAPH_PAUSE_S = 0.7  # after a paragraph
TARGET_LUFS = -20.0  # within audiobook norms (ACX asks for -18 to -23 dB RMS)
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS
FADE_S = 0.01  # a 10 ms fade at each chunk edge: no clicks at the seams
# QA bounds: speech outside these is truncated, garbled or runaway.
MAX_SILENCE_RATIO = 0.6
MAX_CLIPPED_RATIO = 0.001
MIN_CHARS_PER_SECOND, MAX_CHARS_PER_SECOND = 4.0, 40.0


def chunk_qa(audio: np.ndarray, sample_rate: int, chars: int, hit_frame_cap: bool = False) -> dict[str, Any]:
    """Silence ratio, clipping and speaking rate of one chunk, and which bounds it breaks."""
    rms = window_rms(audio, sample_rate)
    seconds = len(audio) / sample_rate
    silence = float(np.mean(rms < 10 ** (SILENCE_DB / 20))) if len(rms) else 1.0
    clipped = float(np.mean(np.abs(audio) >= 0.999)) if len(audio) else 0.0
    rate = chars / seconds if seconds else float("inf")
    problems = [name for name, bad in (
        ("silent", silence > MAX_SILENCE_RATIO),
        ("clipped", clipped > MAX_CLIPPED_RATIO),
        ("too_fast", rate > MAX_CHARS_PER_SECOND),
        ("too_slow", rate < MIN_CHARS_PER_SECOND and seconds > 2.0),
        ("runaway", hit_frame_cap),
    ) if bad]
    return {"silence_ratio": round(silence, 3), "clipped_ratio": round(clipped, 5),
            "chars_per_second": round(rate, 2), "problems": problems}


def finish_chunk(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Loudness-normalized to TARGET_LUFS (peaks held under -1 dBFS), with short fades at both edges."""
    import pyloudnorm

    audio = np.asarray(audio, dtype=np.float64)
    if len(audio) >= int(0.5 * sample_rate):
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(audio)
        if np.isfinite(loudness):
            audio = audio * 10 ** ((TARGET_LUFS - loudness) / 20)
    peak = float(np.max(np.abs(audio))) if len(audio) else 0.0
    if peak > PEAK_LIMIT:
        audio = audio * (PEAK_LIMIT / peak)
    fade = min(int(FADE_S * sample_rate), len(audio) // 2)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        audio[:fade] *= ramp
        audio[-fade:] *= ramp[::-1]
    return audio.astype(np.float32)


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Lossless-enough storage of one chunk: 32-bit float WAV, so stitching loses nothing."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(audio, dtype=np.float32), sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sample_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    return audio, int(sample_rate)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
