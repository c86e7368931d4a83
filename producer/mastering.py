"""How chunks sound when joined: each loudness-normalized with faded edges, and the pauses between them. The
stitcher (a whole file) and the API's streaming (chunk by chunk, as they are stored) share it, so both sound alike."""

from __future__ import annotations

import numpy as np

__all__ = ["PARAGRAPH_PAUSE_S", "SENTENCE_PAUSE_S", "TARGET_LUFS", "finish_chunk", "pause_after"]

SENTENCE_PAUSE_S = 0.25  # between chunks of one paragraph
PARAGRAPH_PAUSE_S = 0.7  # after a paragraph
TARGET_LUFS = -20.0  # within audiobook norms (ACX asks for -18 to -23 dB RMS)
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS
FADE_S = 0.01  # a 10 ms fade at each chunk edge: no clicks at the seams


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


def pause_after(paragraph_end: bool, sample_rate: int) -> np.ndarray:
    """The silence after a chunk that is not the last: longer after a paragraph."""
    return np.zeros(int((PARAGRAPH_PAUSE_S if paragraph_end else SENTENCE_PAUSE_S) * sample_rate), dtype=np.float32)
