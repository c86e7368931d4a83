"""A generated chunk: QA (silence, clipping, speaking rate) and its stored WAV (soundfile)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from worker.models.silence import SILENCE_DB, window_rms

__all__ = [
    "chunk_qa",
    "decode_wav",
    "file_sha256",
    "wav_bytes",
]

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
