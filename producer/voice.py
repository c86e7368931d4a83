"""A voice prompt: checked, mixed to mono and stored content-addressed before a job (or a voice) refers to it.

One check serves every way a recording arrives: a file path (the CLI, `NarrationClient.submit`) and uploaded bytes
(`POST /v1/voices`).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

from producer import keys
from producer.errors import InvalidRequestError
from producer.storage import Storage

__all__ = ["MAX_VOICE_PROMPT_S", "MIN_VOICE_PROMPT_S", "VoicePrompt", "check_voice_prompt", "store_voice_prompt",
           "upload_voice_prompt", "voice_prompt_key"]

MIN_VOICE_PROMPT_S = 0.5
MAX_VOICE_PROMPT_S = 20.0  # keeps the anchor well inside CSM's 2048-position budget (250 frames at most)


@dataclass(frozen=True)
class VoicePrompt:
    """A checked recording: mono 32-bit float WAV bytes, their SHA-256 (the storage key) and the length."""

    wav: bytes
    sha256: str
    seconds: float


def voice_prompt_key(storage: Storage, sha256: str) -> str:
    return storage.key_for(keys.VOICES_FOLDER, f"{sha256}.wav")


def check_voice_prompt(source: str | Path | bytes, field: str = "voice_prompt") -> VoicePrompt:
    """Read a recording from a path or from bytes: 0.5-20 s, any format soundfile reads, not silent, finite.

    Raises InvalidRequestError naming `field`. The length is read from the header first: an hour-long file is
    refused without being decoded.
    """
    import numpy as np
    import soundfile as sf

    what = f"voice prompt {source}" if isinstance(source, str | Path) else f"{field}: the recording"
    try:
        with sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else str(source)) as recording:
            sample_rate = recording.samplerate
            seconds = recording.frames / sample_rate
            if MIN_VOICE_PROMPT_S <= seconds <= MAX_VOICE_PROMPT_S:
                audio = recording.read(dtype="float32", always_2d=True)
    except (OSError, RuntimeError, TypeError, ValueError) as e:  # LibsndfileError is a RuntimeError
        cause = "no such file" if isinstance(source, str | Path) and not Path(source).is_file() else e
        reason = f"not a readable audio file ({getattr(cause, 'error_string', cause)})"
        raise InvalidRequestError(f"{what}: {reason}", [(field, reason)]) from e
    if not MIN_VOICE_PROMPT_S <= seconds <= MAX_VOICE_PROMPT_S:
        allowed = f"{MIN_VOICE_PROMPT_S}-{MAX_VOICE_PROMPT_S:.0f} s"
        raise InvalidRequestError(f"{what} is {seconds:.1f} s long; it must be {allowed}",
                                  [(field, f"{seconds:.1f} s long; it must be {allowed}")])
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all() or float(np.max(np.abs(mono))) < 1e-4:
        raise InvalidRequestError(f"{what} is silent or not finite", [(field, "silent or not finite")])
    buffer = io.BytesIO()
    sf.write(buffer, mono, sample_rate, format="WAV", subtype="FLOAT")
    # Hash the samples, not the file: libsndfile stamps float WAVs with the time (PEAK chunk).
    samples = sample_rate.to_bytes(4, "little") + mono.astype("<f4").tobytes()
    return VoicePrompt(buffer.getvalue(), hashlib.sha256(samples).hexdigest(), round(len(mono) / sample_rate, 3))


def store_voice_prompt(prompt: VoicePrompt, storage: Storage) -> str:
    """Store the recording as <prefix>/voices/<sha256>.wav (once: the same recording is the same object)."""
    key = voice_prompt_key(storage, prompt.sha256)
    if storage.get_bytes(key) is None:
        storage.put_bytes(key, prompt.wav, "audio/wav")
    return prompt.sha256


def upload_voice_prompt(path: str | Path, storage: Storage) -> str:
    """Check and store the recording at `path`; return the sha256 the request carries."""
    return store_voice_prompt(check_voice_prompt(path), storage)
