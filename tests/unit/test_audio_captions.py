"""Per-chunk QA, loudness and seams, and captions."""

from __future__ import annotations

import numpy as np

from producer.mastering import TARGET_LUFS, finish_chunk
from worker.models import PlaceholderCSMModel
from worker.models.silence import trim_trailing_silence
from worker.narration.audio import chunk_qa
from worker.narration.captions import build_cues, to_srt, to_vtt

RATE = 24_000


def _tone(seconds: float, amplitude: float = 0.2) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def test_qa_passes_speech_like_audio_and_names_each_problem() -> None:
    speech, _ = PlaceholderCSMModel().generate_speech("A sentence of ordinary length, spoken calmly.")
    assert chunk_qa(speech, RATE, 45)["problems"] == []
    assert "silent" in chunk_qa(np.zeros(RATE * 3, np.float32), RATE, 45)["problems"]
    assert "clipped" in chunk_qa(np.sign(_tone(3)).astype(np.float32), RATE, 45)["problems"]
    assert "too_fast" in chunk_qa(_tone(0.5), RATE, 300)["problems"]
    assert "too_slow" in chunk_qa(_tone(20), RATE, 10)["problems"]
    assert "runaway" in chunk_qa(_tone(3), RATE, 45, hit_frame_cap=True)["problems"]


def test_finish_chunk_normalizes_loudness_keeps_length_and_fades_edges() -> None:
    import pyloudnorm

    quiet = _tone(3, amplitude=0.01)
    done = finish_chunk(quiet, RATE)
    assert len(done) == len(quiet) and done.dtype == np.float32
    assert abs(pyloudnorm.Meter(RATE).integrated_loudness(done.astype(np.float64)) - TARGET_LUFS) < 0.5
    assert np.max(np.abs(done)) <= 10 ** (-1 / 20) + 1e-6
    assert done[0] == 0.0 and done[-1] == 0.0


def test_trailing_silence_is_trimmed_to_a_short_tail() -> None:
    audio = np.concatenate([_tone(1), np.zeros(RATE * 2, np.float32)])
    trimmed = trim_trailing_silence(audio, RATE)
    assert RATE < len(trimmed) <= RATE + int(0.14 * RATE)


def test_cues_tile_each_chunk_in_reading_order() -> None:
    chunks = [("First sentence. Second sentence is longer.", 0.0, 4.0), ("Third one.", 4.5, 6.0)]
    cues = build_cues(chunks)
    assert [c.text for c in cues] == ["First sentence.", "Second sentence is longer.", "Third one."]
    assert cues[0].start_s == 0.0 and cues[1].end_s == 4.0 and (cues[2].start_s, cues[2].end_s) == (4.5, 6.0)
    assert cues[0].end_s == cues[1].start_s
    srt = to_srt(cues)
    assert srt.startswith("1\n00:00:00,000 --> 00:00:01,463\nFirst sentence.\n")
    assert to_vtt(cues).startswith("WEBVTT\n\n00:00:00.000 --> ")
    assert srt.count(" --> ") == 3
