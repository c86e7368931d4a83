"""Frame-level streaming (worker/models/frame_stream.py): CSMModel.stream_speech hands out audio every few frames
through moshi's streaming Mimi, for both checkpoint formats; the pieces joined are the one-shot audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.models import SAMPLES_PER_FRAME, CSMModel

TEXT = "The lighthouse keeper counted the waves."


@pytest.fixture(scope="module", params=["transformers", "original"])
def model(request: pytest.FixtureRequest, tiny_checkpoint: Path, original_twin: Path) -> CSMModel:
    directory = tiny_checkpoint if request.param == "transformers" else original_twin
    return CSMModel(str(directory), "cpu", dtype="float32")


@pytest.mark.parametrize("sampling", [{"top_k": 1}, {"temperature": 0.9, "top_k": 20, "seed": 7}],
                         ids=["greedy", "seeded"])
def test_streamed_pieces_joined_equal_the_one_shot_audio(model: CSMModel, sampling: dict[str, float]) -> None:
    pieces = list(model.stream_speech(TEXT, max_audio_length_ms=800, frames_per_chunk=2, **sampling))
    audio, _ = model.generate_speech(TEXT, max_audio_length_ms=800, **sampling)
    stats = model.last_generation
    assert stats is not None and stats.frames == 10
    assert [len(p) for p in pieces] == [2 * SAMPLES_PER_FRAME] * 5
    joined = np.concatenate(pieces)
    assert len(joined) == len(audio) + stats.trimmed_samples  # one-shot audio loses its silent tail only
    assert np.abs(joined[: len(audio)] - audio).max() < 1e-4


def test_pieces_come_every_frames_per_chunk_frames_and_a_reader_may_stop_early(model: CSMModel) -> None:
    pieces = list(model.stream_speech(TEXT, top_k=1, max_audio_length_ms=400, frames_per_chunk=3))
    assert [len(p) // SAMPLES_PER_FRAME for p in pieces] == [3, 2]
    stream = model.stream_speech(TEXT, top_k=1, max_audio_length_ms=8000, frames_per_chunk=1)
    first = next(stream)
    stream.close()  # generation stops at its next frame; the model serves the next request
    assert len(first) == SAMPLES_PER_FRAME
    assert len(np.concatenate(list(model.stream_speech(TEXT, top_k=1, max_audio_length_ms=160)))) == \
        2 * SAMPLES_PER_FRAME
