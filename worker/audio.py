"""Audio encoding for delivery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["CONTENT_TYPES", "encode", "file_sha256", "trim_trailing_silence"]

CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac"}


def encode(audio: np.ndarray, sample_rate: int, path: Path, fmt: str) -> None:
    """16-bit PCM mono WAV or FLAC."""
    import soundfile as sf

    sf.write(path, np.asarray(audio, dtype=np.float32), sample_rate, format=fmt.upper(), subtype="PCM_16")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def trim_trailing_silence(audio: np.ndarray, sample_rate: int, threshold_db: float = -45.0,
                          keep_ms: float = 120.0) -> np.ndarray:
    """Cut a silent tail (20 ms windows below `threshold_db` dBFS RMS), keeping `keep_ms` of it."""
    window = max(1, int(sample_rate * 0.02))
    usable = len(audio) - len(audio) % window
    if usable == 0:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[:usable].reshape(-1, window), dtype=np.float64), axis=1))
    loud = np.nonzero(rms > 10 ** (threshold_db / 20))[0]
    end = (int(loud[-1]) + 1) * window if len(loud) else 0
    return audio[: min(len(audio), end + int(sample_rate * keep_ms / 1000))]
