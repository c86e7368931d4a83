"""PlaceholderCSMModel: the same API as CSMModel, producing a soft tone as long as speech would be."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from worker.models.base import SAMPLE_RATE, Generated, RowDone, SpeechModel, SpeechRequest, TextDone, TextOf, TextRefill

__all__ = ["PlaceholderCSMModel"]

CHARS_PER_SECOND = 15.0  # about 150 words a minute
MIN_SECONDS = 0.4


class PlaceholderCSMModel(SpeechModel):
    """A real tone generator for development, demos and tests where no CSM weights are present.

    `rtf` (wall seconds per second of audio) makes it take time like a GPU would, by sleeping, so
    queue behaviour can be exercised without burning CPU.
    """

    kind = "placeholder"
    model_id = "placeholder-tone"

    def __init__(self, rtf: float = 0.0, fallback_reason: str | None = None) -> None:
        self.rtf = rtf
        self.fallback_reason = fallback_reason

    def generate_requests(self, requests: list[SpeechRequest], on_row: RowDone | None = None) -> list[list[Generated]]:
        """A tone per text, one by one (the placeholder has nothing to batch); each handed to `on_row` once made."""
        results: list[list[Generated]] = []
        for r, request in enumerate(requests):
            results.append([])
            for i, text in enumerate(request.texts):
                results[-1].append(self._tone(text, request.speaker_id, request.max_audio_length_ms))
                if on_row is not None:
                    on_row(r, i, results[-1][-1])
        return results

    def generate_stream(self, refill: TextRefill, on_done: TextDone, size: int) -> None:
        """Continuous batching, played one text at a time in the order started: as each text is done, its slot is
        refilled at once, so up to `size` texts are in flight (started, not done) as on a batched model."""
        running: deque[TextOf] = deque(refill(size))
        while running:
            handle = running.popleft()
            request = handle.request
            on_done(handle, self._tone(request.texts[handle.index], request.speaker_id, request.max_audio_length_ms))
            running.extend(refill(size - len(running)))

    def _tone(self, text: str, speaker_id: int, max_audio_length_ms: float | None) -> Generated:
        seconds = max(MIN_SECONDS, len(text.strip()) / CHARS_PER_SECOND)
        if max_audio_length_ms is not None:
            seconds = min(seconds, max_audio_length_ms / 1000)
        samples = int(seconds * SAMPLE_RATE)
        t = np.arange(samples, dtype=np.float32) / SAMPLE_RATE
        pitch = 150.0 + 15.0 * (speaker_id % 8)
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t)  # a syllable-like swell
        audio = (0.2 * envelope * np.sin(2 * np.pi * pitch * t)).astype(np.float32)
        if self.rtf > 0:
            time.sleep(seconds * self.rtf)
        return Generated(audio, SAMPLE_RATE)
