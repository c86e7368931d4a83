"""Audio encoding for delivery."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["CONTENT_TYPES", "encode", "file_sha256"]

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
