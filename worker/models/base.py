"""What every speech model offers besides generation: saving audio and freeing resources."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from producer.request import DEFAULT_SPEAKER_ID, DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from worker.models.errors import CSMModelError

__all__ = ["SAMPLE_RATE", "FrameSink", "Generated", "RowDone", "Segment", "SpeechModel", "SpeechRequest", "TextDone",
           "TextRefill", "split_by"]

SAMPLE_RATE = 24_000  # CSM's Mimi codec rate
_T = TypeVar("_T")


def split_by(items: Sequence[_T], sizes: Sequence[int]) -> list[list[_T]]:
    """`items` cut into consecutive groups of the given sizes (results of a flattened batch, per request)."""
    groups, start = [], 0
    for size in sizes:
        groups.append(list(items[start: start + size]))
        start += size
    return groups


@dataclass(frozen=True)
class Segment:
    """One utterance of context (voice prompt): who spoke, what they said, and the audio at any sample rate."""

    speaker: int
    text: str
    audio: Any  # 1-D numpy array or torch tensor
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class Generated:
    """One text's speech from generate_batch: mono float32 audio, its rate, and what the model did (or None)."""

    audio: np.ndarray
    sample_rate: int
    stats: Any = None


# Called as each text's speech is done, before the rest of its batch: (request index, text index, result). It may be
# called from another thread than the caller's (a shared model's generation thread): it must only hand the result on.
RowDone = Callable[[int, int, "Generated"], None]


# generate_stream's callbacks: (free slots) -> texts to start (handles from start_texts), and (handle, its speech).
TextRefill = Callable[[int], list[Any]]
TextDone = Callable[[Any, "Generated"], None]

# Hears each frame of a request's text as the engine makes it: (text index, codes [codebooks], on the model's device).
# Called from the generation thread between frames of every row in its batch: it must only hand the codes on.
FrameSink = Callable[[int, Any], None]


@dataclass(frozen=True)
class SpeechRequest:
    """Several texts in one voice and context (one job's batch); seeds[i] makes text i repeatable on its own."""

    texts: list[str]
    speaker_id: int = DEFAULT_SPEAKER_ID
    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    context: list[Segment] | None = None
    seeds: list[int | None] | None = None
    max_audio_length_ms: float | None = None
    owner: str | None = None  # whose texts (a job id): a shared model gives each owner a fair share of its slots
    on_frame: FrameSink | None = None  # frame streaming (CSMModel only; others never call it)

    def seeded_texts(self) -> list[tuple[str, int | None]]:
        return list(zip(self.texts, self.seeds or [None] * len(self.texts), strict=True))


@dataclass(frozen=True, eq=False)  # one handle per text started, told apart by identity
class TextOf:
    """Text `index` of `request`: the default handle of SpeechModel.start_texts."""

    request: SpeechRequest
    index: int


class SpeechModel:
    """Shared behaviour of CSMModel and PlaceholderCSMModel."""

    kind = "unknown"
    model_id = "unknown"
    revision: str | None = None
    device = "cpu"
    batch_size = 1  # how many texts generate_batch callers should hand over at once (ECHOFORGE_BATCH_SIZE)
    takes_concurrent_requests = False  # whether several threads may call generate_* at once (they share its batches)

    def generate_speech(
        self,
        text: str,
        speaker_id: int = DEFAULT_SPEAKER_ID,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        context: list[Segment] | None = None,
        max_audio_length_ms: float | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Mono float32 audio for `text` and its sample rate (24 kHz); `seed` makes sampling repeatable."""
        [result] = self.generate_batch([text], speaker_id, temperature, top_k, context, [seed], max_audio_length_ms)
        self.last_generation = result.stats
        return result.audio, result.sample_rate

    def generate_batch(
        self,
        texts: list[str],
        speaker_id: int = DEFAULT_SPEAKER_ID,
        temperature: float = DEFAULT_TEMPERATURE,
        top_k: int = DEFAULT_TOP_K,
        context: list[Segment] | None = None,
        seeds: list[int | None] | None = None,
        max_audio_length_ms: float | None = None,
        on_done: Callable[[int, Generated], None] | None = None,
        owner: str | None = None,
    ) -> list[Generated]:
        """Speech for several texts in one voice and context; seeds[i] makes text i repeatable on its own.
        `on_done(i, result)` is called as text i's speech is done, before the rest of the batch (see RowDone);
        `owner` (a job id) groups the calls of one job for a shared model's fair shares."""
        request = SpeechRequest(texts, speaker_id, temperature, top_k, context, seeds, max_audio_length_ms, owner)
        rows = None if on_done is None else lambda _request, i, result: on_done(i, result)
        return self.generate_requests([request], rows)[0]

    def generate_requests(self, requests: list[SpeechRequest], on_row: RowDone | None = None) -> list[list[Generated]]:
        """Speech for the texts of several requests (several jobs' voices); one list of results per request;
        `on_row` hears of each text as soon as it is done.

        Every model implements this; generate_speech and generate_batch are built on it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement generate_requests")

    def start_texts(self, request: SpeechRequest) -> list[Any]:
        """One handle per text of `request`, for generate_stream (raises what generating the request would)."""
        return [TextOf(request, i) for i in range(len(request.texts))]

    def generate_stream(self, refill: TextRefill, on_done: TextDone, size: int) -> None:
        """Speak the texts `refill(free slots)` hands over (handles from start_texts), at most `size` at once, until
        it hands none while none is left; `on_done(handle, result)` as each is done, from this thread.

        This default speaks them `size` at a time, a batch after a batch; CSMModel refills each slot as its text ends.
        """
        while handles := refill(size):
            self._speak_together(handles, on_done)

    def _speak_together(self, handles: list[Any], on_done: TextDone) -> None:
        """One generate_requests call for texts of several requests (handles from start_texts)."""
        groups: dict[int, list[TextOf]] = {}
        for handle in handles:
            groups.setdefault(id(handle.request), []).append(handle)
        parts = list(groups.values())
        requests = [replace(part[0].request, texts=[h.request.texts[h.index] for h in part],
                            seeds=[h.request.seeded_texts()[h.index][1] for h in part]) for part in parts]
        self.generate_requests(requests, lambda r, i, result: on_done(parts[r][i], result))

    def streaming_codec(self) -> Any:
        """A codec that decodes a few frames at a time (moshi's Mimi), or None: this model cannot stream frames."""
        return None

    fallback_reason: str | None = None
    last_generation: Any = None  # what the last generate_speech call did (CSMModel: GenerationStats)

    @contextmanager
    def serving_job(self) -> Iterator[None]:
        """Held by a job while it runs on this model (a shared model batches the jobs that hold it)."""
        yield

    def describe(self) -> dict[str, Any]:
        """What a job record says about the model that ran it."""
        return {"kind": self.kind, "id": self.model_id, "revision": self.revision, "device": self.device,
                "fallback_reason": self.fallback_reason}

    @staticmethod
    def save_audio(audio: np.ndarray, sample_rate: int, path: str | Path) -> Path:
        """Write mono float audio as 16-bit WAV or FLAC, chosen by the file suffix."""
        import soundfile as sf

        target = Path(path)
        formats = {".wav": "WAV", ".flac": "FLAC"}
        if target.suffix.lower() not in formats:
            raise CSMModelError(f"cannot save {target.name}: use a .wav or .flac suffix")
        target.parent.mkdir(parents=True, exist_ok=True)
        sf.write(target, np.asarray(audio, dtype=np.float32), sample_rate,
                 format=formats[target.suffix.lower()], subtype="PCM_16")
        return target

    def cleanup(self) -> None:
        """Free what the model holds (GPU memory for CSM); the placeholder holds nothing."""
