"""A caller's voice prompt: checked, mixed to mono and stored content-addressed before the job is enqueued."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from producer import keys
from producer.errors import InvalidRequestError
from producer.storage import Storage

__all__ = ["MAX_VOICE_PROMPT_S", "MIN_VOICE_PROMPT_S", "upload_voice_prompt", "voice_prompt_key"]

MIN_VOICE_PROMPT_S = 0.5
MAX_VOICE_PROMPT_S = 20.0  # keeps the anchor well inside CSM's 2048-position budget (250 frames at most)


def voice_prompt_key(storage: Storage, sha256: str) -> str:
    return storage.key_for(keys.VOICES_FOLDER, f"{sha256}.wav")


def upload_voice_prompt(path: str | Path, storage: Storage) -> str:
    """Store the recording as <prefix>/voices/<sha256>.wav and return the sha256 the request carries."""
    import numpy as np
    import soundfile as sf

    try:
        info = sf.info(str(path))  # the length first: never decode an hour-long file to refuse it
        seconds = info.frames / info.samplerate
        if MIN_VOICE_PROMPT_S <= seconds <= MAX_VOICE_PROMPT_S:
            audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError (a RuntimeError) on bad data
        raise InvalidRequestError(f"voice prompt {path}: not a readable audio file ({e})") from e
    if not MIN_VOICE_PROMPT_S <= seconds <= MAX_VOICE_PROMPT_S:
        raise InvalidRequestError(f"voice prompt {path} is {seconds:.1f} s long; it must be "
                                  f"{MIN_VOICE_PROMPT_S}-{MAX_VOICE_PROMPT_S:.0f} s")
    mono = audio.mean(axis=1)
    if not np.isfinite(mono).all() or float(np.max(np.abs(mono))) < 1e-4:
        raise InvalidRequestError(f"voice prompt {path} is silent or not finite")
    buffer = io.BytesIO()
    sf.write(buffer, mono, sample_rate, format="WAV", subtype="FLOAT")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    key = voice_prompt_key(storage, digest)
    if storage.get_bytes(key) is None:
        storage.put_bytes(key, data, "audio/wav")
    return digest
