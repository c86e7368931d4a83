"""One check for every voice prompt: a file (the CLI) and uploaded bytes (the API) give the same stored recording."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from producer.errors import InvalidRequestError
from producer.voice import check_voice_prompt


def _stereo_flac(seconds: float, amplitude: float = 0.3) -> bytes:
    t = np.arange(int(seconds * 22_050)) / 22_050
    tone = amplitude * np.sin(2 * np.pi * 200 * t)
    buffer = io.BytesIO()
    sf.write(buffer, np.stack([tone, tone], axis=1), 22_050, format="FLAC")
    return buffer.getvalue()


def test_a_path_and_its_bytes_are_the_same_prompt(tmp_path: Path) -> None:
    data = _stereo_flac(2.0)
    (tmp_path / "me.flac").write_bytes(data)
    from_path, from_bytes = check_voice_prompt(tmp_path / "me.flac"), check_voice_prompt(data)
    assert from_path.sha256 == from_bytes.sha256 and from_bytes.seconds == 2.0
    stored, rate = sf.read(io.BytesIO(from_bytes.wav))
    assert stored.ndim == 1 and rate == 22_050 and sf.info(io.BytesIO(from_bytes.wav)).subtype == "FLOAT"


def test_the_same_recording_has_the_same_hash_a_second_later() -> None:
    """libsndfile writes the time into a float WAV's PEAK chunk; the hash must not depend on it."""
    data = _stereo_flac(1.0)
    first = check_voice_prompt(data)
    time.sleep(1.1)
    second = check_voice_prompt(data)
    assert first.wav != second.wav, "the stored files differ (the fixture crosses a second)"
    assert first.sha256 == second.sha256


@pytest.mark.parametrize(("data", "message"), [
    (_stereo_flac(0.2), "0.2 s long; it must be 0.5-20 s"),
    (_stereo_flac(21.0), "21.0 s long; it must be 0.5-20 s"),
    (_stereo_flac(2.0, amplitude=0.0), "silent or not finite"),
    (b"not audio at all", "not a readable audio file (Format not recognised.)"),
    (b"", "not a readable audio file"),
])
def test_a_bad_recording_is_refused_naming_the_field(data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        check_voice_prompt(data, field="audio")
    assert [field for field, _ in refused.value.fields] == ["audio"] and message in refused.value.fields[0][1]
