"""Silence in generated audio: short-window loudness, and trimming the silent tail CSM leaves before its cap."""

from __future__ import annotations

import numpy as np

__all__ = ["SILENCE_DB", "trim_trailing_silence", "window_rms"]

SILENCE_DB = -45.0


def window_rms(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    window = max(1, int(sample_rate * 0.02))
    usable = len(audio) - len(audio) % window
    if usable == 0:
        return np.zeros(0)
    return np.sqrt(np.mean(np.square(audio[:usable].reshape(-1, window), dtype=np.float64), axis=1))


def trim_trailing_silence(audio: np.ndarray, sample_rate: int, threshold_db: float = SILENCE_DB,
                          keep_ms: float = 120.0) -> np.ndarray:
    """Cut a silent tail (20 ms windows below `threshold_db` dBFS RMS), keeping `keep_ms` of it."""
    rms = window_rms(audio, sample_rate)
    if len(rms) == 0:
        return audio
    loud = np.nonzero(rms > 10 ** (threshold_db / 20))[0]
    end = (int(loud[-1]) + 1) * int(sample_rate * 0.02) if len(loud) else 0
    return audio[: min(len(audio), end + int(sample_rate * keep_ms / 1000))]
