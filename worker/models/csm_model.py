"""CSMModel: Sesame CSM-1B through transformers' CsmForConditionalGeneration, behind the original EchoForge API."""

from __future__ import annotations

import gc
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.audio import trim_trailing_silence
from worker.models.base import SAMPLE_RATE, Segment, SpeechModel
from worker.models.device import select_device
from worker.models.errors import CSMModelError, CSMModelLoadError
from worker.models.loading import load_checkpoint, resolve_checkpoint

__all__ = ["DEFAULT_MODEL_ID", "SAMPLES_PER_FRAME", "CSMModel", "GenerationStats", "frame_budget", "undecodable_codes"]

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "sesame/csm-1b"
SAMPLES_PER_FRAME = 1920  # one Mimi frame = 80 ms at 24 kHz
FRAMES_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_FRAME
SLOWEST_CHARS_PER_SECOND = 6.0  # normal narration runs ~15; anything slower than this is runaway generation
EXTRA_SECONDS = 2.0


def frame_budget(text: str, max_audio_length_ms: float | None = None) -> int:
    """The most frames a text may take: CSM often never emits its end frame, so cap it by the text's length."""
    seconds = EXTRA_SECONDS + len(text) / SLOWEST_CHARS_PER_SECOND
    if max_audio_length_ms is not None:
        seconds = min(seconds, max_audio_length_ms / 1000)
    return max(1, math.ceil(seconds * FRAMES_PER_SECOND))


def undecodable_codes(config: Any) -> list[int]:
    """Codebook ids the codec cannot decode (CSM's vocabulary has 3 more than Mimi's codebook); never sample them."""
    return list(range(int(config.codec_config.codebook_size), int(config.vocab_size)))


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    context_audio_frames: int  # audio frames of the context segments the model was given
    frames: int  # frames generated before the end frame (or the cap)
    frame_cap: int
    trimmed_samples: int  # silent tail removed


class CSMModel(SpeechModel):
    """CSM-1B on one device. The backbone and depth decoder run in bf16 (fp32 if asked); the Mimi codec stays fp32."""

    kind = "csm"

    def __init__(self, model_path: str | None = None, device: str | None = None, *,
                 model_id: str = DEFAULT_MODEL_ID, revision: str | None = None, dtype: str = "bfloat16") -> None:
        import torch

        source = model_path or model_id
        directory, commit = resolve_checkpoint(source, revision)
        processor, model = load_checkpoint(directory, torch.float32)
        self._adopt(processor, model, source, commit or revision, device, dtype)

    @classmethod
    def from_loaded(cls, processor: Any, model: Any, *, device: str | None = None, dtype: str = "bfloat16",
                    model_id: str = "in-memory") -> CSMModel:
        """Wrap a processor and CsmForConditionalGeneration already in memory (benchmarks, notebooks)."""
        self = cls.__new__(cls)
        self._adopt(processor, model.eval(), model_id, None, device, dtype)
        return self

    def _adopt(self, processor: Any, model: Any, model_id: str, revision: str | None, device: str | None,
               dtype: str) -> None:
        import torch

        self.model_id, self.revision, self.dtype = model_id, revision, dtype
        self.device, self.fallback_reason = select_device(device)
        self.processor, self.model = processor, model
        try:
            self.model.to(device=self.device, dtype=getattr(torch, dtype))
            self.model.codec_model.to(dtype=torch.float32)  # Mimi decodes garbage in bf16
        except torch.OutOfMemoryError as e:
            self.cleanup()
            raise CSMModelLoadError(f"out of memory moving {self.model_id} to {self.device}") from e
        self.max_positions = int(self.model.config.max_position_embeddings)
        self.last_generation: GenerationStats | None = None
        log.info("CSM %s (revision %s) ready on %s in %s", self.model_id, self.revision, self.device, dtype)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dtype": self.dtype}

    def generate_speech(
        self,
        text: str,
        speaker_id: int = 1,
        temperature: float = 0.9,
        top_k: int = 50,
        context: list[Segment] | None = None,
        max_audio_length_ms: float | None = None,
        seed: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """Speech for `text` in the voice of `speaker_id`, prompted by `context`: (float32 mono, 24000)."""
        import torch

        inputs = self._inputs(text, speaker_id, context or [])
        prompt_tokens = int(inputs["input_ids"].shape[1])
        cap = min(frame_budget(text, max_audio_length_ms), self.max_positions - prompt_tokens)
        if cap < 1:
            raise CSMModelError(f"the context and text take {prompt_tokens} of the model's {self.max_positions} "
                                "positions; shorten the voice prompt or the chunk")
        if seed is not None:
            torch.manual_seed(seed)  # seeds CUDA too
        sampling = {"do_sample": True, "temperature": float(temperature), "top_k": int(top_k),
                    "suppress_tokens": undecodable_codes(self.model.config)}
        try:
            with torch.inference_mode():
                audio = self.model.generate(**inputs, output_audio=True, max_new_tokens=cap, **sampling,
                                            **{f"depth_decoder_{k}": v for k, v in sampling.items()})
        except torch.OutOfMemoryError as e:
            raise CSMModelError(f"out of memory generating {len(text)} characters on {self.device}") from e
        waveform = audio[0].detach().float().cpu().numpy().astype(np.float32)
        trimmed = trim_trailing_silence(waveform, SAMPLE_RATE)
        context_frames = int((inputs["input_ids"] == self.processor.audio_token_id).sum())
        self.last_generation = GenerationStats(prompt_tokens, context_frames, len(waveform) // SAMPLES_PER_FRAME,
                                               cap, len(waveform) - len(trimmed))
        return trimmed, SAMPLE_RATE

    def _inputs(self, text: str, speaker_id: int, context: list[Segment]) -> Any:
        tokenizer = self.processor.tokenizer

        def turn(speaker: int, words: str) -> str:
            return f"{tokenizer.bos_token}[{speaker}]{words}{tokenizer.eos_token}"

        audio_marker = self.processor.audio_token + self.processor.audio_eos_token
        prompt = "".join(turn(s.speaker, s.text) + audio_marker for s in context) + turn(speaker_id, text)
        audio = [_to_24k_mono(s) for s in context]
        inputs = self.processor(text=prompt, audio=audio or None, return_tensors="pt")
        inputs.pop("token_type_ids", None)
        return inputs.to(self.device)

    def cleanup(self) -> None:
        """Drop the weights and give GPU memory back to the driver."""
        import torch

        self.model = None
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _to_24k_mono(segment: Segment) -> np.ndarray:
    import torch
    import torchaudio

    audio = torch.as_tensor(np.asarray(segment.audio, dtype=np.float32))
    if audio.ndim == 2:  # (channels, samples) or (samples, channels)
        audio = audio.mean(dim=0 if audio.shape[0] < audio.shape[1] else 1)
    if audio.ndim != 1 or audio.numel() == 0:
        raise CSMModelError(f"context audio for speaker {segment.speaker} must be a non-empty mono signal")
    if segment.sample_rate != SAMPLE_RATE:
        audio = torchaudio.functional.resample(audio, segment.sample_rate, SAMPLE_RATE)
    return audio.numpy()
