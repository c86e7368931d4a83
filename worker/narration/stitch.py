"""Stitch stored chunks into one narration file, encoded as it goes one chunk at a time (memory stays flat)."""

from __future__ import annotations

from itertools import chain
from pathlib import Path

from producer.audio_formats import AudioEncoder
from producer.mastering import PARAGRAPH_PAUSE_S, SENTENCE_PAUSE_S, finish_chunk, pause_after
from worker.narration.audio import decode_wav
from worker.narration.manifest import Manifest

__all__ = ["stitch"]


def stitch(manifest: Manifest, spool: Path, target: Path, fmt: str) -> float:
    """Write every chunk, loudness-normalized with faded edges, pauses between; sets start/end per chunk.

    The duration returned (and each chunk's start/end) counts the samples written, exactly; a lossy file may decode
    a little longer (see producer/audio_formats.py: `slack_s`).
    """
    position = 0
    entries = manifest.ordered()
    decoded = (decode_wav(manifest.read_chunk(entry["index"], spool)) for entry in entries)
    first, sample_rate = next(decoded)  # the output's rate comes from the first chunk, decoded once
    with target.open("wb") as sink, AudioEncoder.open(fmt, sample_rate, sink) as out:
        for i, (entry, (audio, _)) in enumerate(zip(entries, chain([(first, sample_rate)], decoded), strict=True)):
            out.write(finish_chunk(audio, sample_rate))
            entry["start_s"], entry["end_s"] = position / sample_rate, (position + len(audio)) / sample_rate
            position += len(audio)
            if i < len(entries) - 1:
                pause = pause_after(entry["paragraph_end"], sample_rate)
                out.write(pause)
                position += len(pause)
    manifest.data.update(duration_s=position / sample_rate, sample_rate=sample_rate,
                         pauses_s={"sentence": SENTENCE_PAUSE_S, "paragraph": PARAGRAPH_PAUSE_S})
    return position / sample_rate
