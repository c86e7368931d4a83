"""CSMModel: Sesame CSM-1B through transformers' CsmForConditionalGeneration, behind the original EchoForge API."""

from __future__ import annotations

import copy
import functools
import gc
import hashlib
import logging
import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from producer.request import DEFAULT_SPEAKER_ID, DEFAULT_TEMPERATURE, DEFAULT_TOP_K
from producer.settings import DEFAULT_MODEL_ID
from worker.models.base import (
    SAMPLE_RATE,
    Generated,
    RowDone,
    Segment,
    SpeechModel,
    SpeechRequest,
    TextDone,
    TextRefill,
)
from worker.models.device import select_device
from worker.models.errors import CSMModelError, CSMModelLoadError
from worker.models.frame_stream import DEFAULT_FRAMES_PER_CHUNK, stream_frames
from worker.models.loading import hub_mimi_weights, load_checkpoint, resolve_checkpoint
from worker.models.original import MIMI_WEIGHTS, detect_format, load_original
from worker.models.silence import trim_trailing_silence

if TYPE_CHECKING:  # the engine imports torch: only pool processes that load CSM may pay for it
    from worker.models.engine import CsmEngine
    from worker.models.moshi_codec import MoshiCodec

__all__ = ["DEFAULT_MODEL_ID", "SAMPLES_PER_FRAME", "CSMModel", "GenerationStats", "frame_budget", "undecodable_codes"]

log = logging.getLogger(__name__)

SAMPLES_PER_FRAME = 1920  # one Mimi frame = 80 ms at 24 kHz
FRAMES_PER_SECOND = SAMPLE_RATE / SAMPLES_PER_FRAME
SLOWEST_CHARS_PER_SECOND = 6.0  # normal narration runs ~15; anything slower than this is runaway generation
EXTRA_SECONDS = 2.0
PREFIX_CACHE_SIZE = 64  # voice anchors kept encoded: more than the jobs one worker batches together


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


@dataclass(frozen=True, eq=False)
class _Text:
    """One text as the engine decodes it: its engine row, and its context's audio frames."""

    row: Any  # engine.Row: embeddings of its request's context (prefix) and of its own turn, cap, sampling
    context_frames: int
    on_frame: Callable[[Any], None] | None = None  # its request's FrameSink, for this text


def _generated(text: _Text, wave: np.ndarray, frames: int) -> Generated:
    trimmed = trim_trailing_silence(wave, SAMPLE_RATE)
    stats = GenerationStats(text.row.length, text.context_frames, frames, text.row.cap, len(wave) - len(trimmed))
    return Generated(trimmed, SAMPLE_RATE, stats)


class CSMModel(SpeechModel):
    """CSM-1B on one device, decoded by CsmEngine. The backbone and depth decoder run in bf16 where the hardware has
    bf16 arithmetic (`dtype="auto"`: CUDA, AMX / AVX512-BF16 CPUs), else fp32; the Mimi codec stays fp32."""

    kind = "csm"

    def __init__(self, model_path: str | None = None, device: str | None = None, *,
                 model_id: str = DEFAULT_MODEL_ID, revision: str | None = None, dtype: str = "auto",
                 model_format: str = "auto") -> None:
        import torch

        source = model_path or model_id
        directory, commit = resolve_checkpoint(source, revision, model_format)
        self.model_format = detect_format(directory, model_format)
        codec = None
        if self.model_format == "original":
            from_hub = commit is not None and not (directory / MIMI_WEIGHTS).exists()
            processor, model, codec = load_original(directory, hub_mimi_weights(MIMI_WEIGHTS) if from_hub else None)
        else:
            processor, model = load_checkpoint(directory, torch.float32)
        self._adopt(processor, model, source, commit or revision, device, dtype, codec)

    @classmethod
    def from_loaded(cls, processor: Any, model: Any, *, device: str | None = None, dtype: str = "auto",
                    model_id: str = "in-memory") -> CSMModel:
        """Wrap a processor and CsmForConditionalGeneration already in memory (benchmarks, notebooks)."""
        self = cls.__new__(cls)
        self.model_format = "transformers"
        self._adopt(processor, model.eval(), model_id, None, device, dtype)
        return self

    def _adopt(self, processor: Any, model: Any, model_id: str, revision: str | None, device: str | None,
               dtype: str, codec: MoshiCodec | None = None) -> None:
        import torch

        from worker.models.engine import CsmEngine, compute_dtype

        self.model_id, self.revision = model_id, revision
        self.device, self.fallback_reason = select_device(device)
        self.dtype = str(compute_dtype(self.device)).removeprefix("torch.") if dtype == "auto" else dtype
        self.processor, self.model = processor, model
        try:
            _place(self.model, self.device, getattr(torch, self.dtype))
            self.codec = None if codec is None else codec.to(self.device)  # None: the checkpoint's own (transformers)
            self.codec_name = "transformers-mimi" if codec is None else codec.name
            self.engine: CsmEngine | None = CsmEngine(self.model)
        except RuntimeError as e:  # out of memory, or a CUDA error (driver, no kernel for this GPU): try the CPU
            if not (isinstance(e, torch.OutOfMemoryError) or self.device.startswith("cuda")):
                raise
            self.cleanup()
            first = (str(e).strip().splitlines() or [""])[0][:200]
            why = f"{type(e).__name__}: {first}"
            raise CSMModelLoadError(f"cannot move {self.model_id} to {self.device} ({why})") from e
        self.max_positions = int(self.model.config.max_position_embeddings)
        self._prefix_cache: dict[tuple[tuple[int, str, str], ...], tuple[Any, int]] = {}
        self._stream_codec: MoshiCodec | None = None  # never the batch decoder: streaming state lives in the module
        log.info("CSM %s (revision %s) ready on %s in %s", self.model_id, self.revision, self.device, self.dtype)

    def describe(self) -> dict[str, Any]:
        """Also the compute dtype, whether the engine's steps are compiled and, when any CUDA graph capture or
        torch.compile failed (that part then ran eagerly), why."""
        engine = self.engine
        failures = {"graph_capture_failures": engine.graph_failures if engine else [],
                    "compile_failures": engine.compile_failures if engine else []}
        compiled = {"torch_compile": True} if engine and engine.compiled else {}
        return {**super().describe(), "dtype": self.dtype, "format": self.model_format, "codec": self.codec_name,
                **compiled, **{k: v for k, v in failures.items() if v}}

    def decode(self, codes: Any) -> np.ndarray:
        """Mono float32 audio of codes [frames, codebooks] through the model's codec."""
        assert self.engine is not None
        wave = self.engine.decode(codes) if self.codec is None else self.codec.decode(codes)
        return wave.numpy().astype(np.float32)

    def streaming_codec(self) -> MoshiCodec:
        """moshi's Mimi with this model's codec weights (built once): it decodes a few frames at a time. Its own
        copy, never the codec that decodes whole rows, since a streaming context holds state in the module."""
        from worker.models.moshi_codec import MoshiCodec

        assert self.engine is not None and self.model is not None
        if self._stream_codec is None:
            self._stream_codec = copy.deepcopy(self.codec) if self.codec is not None else \
                MoshiCodec.from_transformers(self.model.codec_model, self.engine.codebooks)
        return self._stream_codec

    def generate_requests(self, requests: list[SpeechRequest], on_row: RowDone | None = None) -> list[list[Generated]]:
        """Speech for the texts of every request, all decoded together, each after its own request's context
        (several jobs' voices in one batch). Top_k 1 is greedy. A text's speech is decoded as soon as its row ends
        and handed to `on_row`, while the other rows go on.

        seeds[i] seeds text i's own sampler: its draw does not depend on which texts share the batch.
        """
        texts = [self.start_texts(r) for r in requests]
        where = {text: (r, i) for r, group in enumerate(texts) for i, text in enumerate(group)}
        pending = [text for group in texts for text in group]
        done: dict[Any, Generated] = {}

        def ended(text: Any, result: Generated) -> None:
            done[text] = result
            if on_row is not None:
                on_row(*where[text], result)

        def all_at_once(_free: int) -> list[Any]:
            taken, pending[:] = list(pending), []
            return taken

        self.generate_stream(all_at_once, ended, max(1, len(pending)))
        return [[done[text] for text in group] for group in texts]

    def generate_stream(self, refill: TextRefill, on_done: TextDone, size: int) -> None:
        """Continuous batching: each text's row is decoded as soon as it ends and handed to `on_done`, and its slot
        is taken by the next text `refill` hands over, prefilled after its own request's context."""
        import torch

        engine = self.engine
        if engine is None:
            raise CSMModelError("the model was cleaned up")
        running: dict[Any, _Text] = {}

        def take(free: int) -> list[Any]:
            texts = refill(free)
            running.update((text.row, text) for text in texts)
            return [text.row for text in texts]

        def ended(row: Any, codes: Any) -> None:
            text = running.pop(row)
            on_done(text, _generated(text, self.decode(codes), len(codes)))

        def frame(row: Any, codes: Any) -> None:  # the engine calls it only for rows that stream (a sink)
            sink = running[row].on_frame
            if sink is not None:
                sink(codes)

        try:
            engine.run(take(size), ended, take, size, on_frame=frame)
        except torch.OutOfMemoryError as e:
            raise CSMModelError(f"out of memory generating {len(running)} texts on {self.device}") from e

    def stream_speech(self, text: str, speaker_id: int = DEFAULT_SPEAKER_ID, temperature: float = DEFAULT_TEMPERATURE,
                      top_k: int = DEFAULT_TOP_K, context: list[Segment] | None = None,
                      max_audio_length_ms: float | None = None, seed: int | None = None,
                      frames_per_chunk: int = DEFAULT_FRAMES_PER_CHUNK) -> Generator[np.ndarray, None, None]:
        """`text`'s speech as it is generated: mono float32 24 kHz pieces of `frames_per_chunk` frames (80 ms each),
        through moshi's streaming Mimi; joined, they equal generate_speech's audio before its silent tail is trimmed.
        Not to be run beside another generation on the same model."""
        if self.engine is None:
            raise CSMModelError("the model was cleaned up")
        engine = self.engine
        [one] = self.start_texts(SpeechRequest([text], speaker_id, temperature, top_k, context, [seed],
                                               max_audio_length_ms))
        row = one.row
        return stream_frames(lambda on_frame: engine.generate_rows([row.prefix], [row.prompt], [row.cap],
                                                                    [row.sampling], on_frame=on_frame),
                             self.streaming_codec(), frames_per_chunk)

    def start_texts(self, request: SpeechRequest) -> list[Any]:
        """The engine's rows for one request's texts: its context's prefix, each prompt, cap and sampler."""
        from worker.models.engine import Row, Sampling

        if self.engine is None:
            raise CSMModelError("the model was cleaned up")
        prefix, context_frames = self._prefix(request.context or [])
        prefix_len = 0 if prefix is None else len(prefix)
        texts = []
        for i, (text, seed) in enumerate(request.seeded_texts()):
            prompt = self.engine.embed_prompt(self._turn_ids(text, request.speaker_id))
            cap = self._cap(text, prefix_len + len(prompt), request.max_audio_length_ms)
            sink = None if request.on_frame is None else functools.partial(request.on_frame, i)
            texts.append(_Text(Row(prefix, prompt, cap, Sampling(request.temperature, request.top_k, seed),
                                   streams=sink is not None), context_frames, sink))
        return texts

    def _cap(self, text: str, prompt_tokens: int, max_audio_length_ms: float | None) -> int:
        cap = min(frame_budget(text, max_audio_length_ms), self.max_positions - prompt_tokens)
        if cap < 1:
            raise CSMModelError(f"the context and text take {prompt_tokens} of the model's {self.max_positions} "
                                "positions; shorten the voice prompt or the chunk")
        return cap

    def _turn(self, speaker: int, words: str) -> str:
        tokenizer = self.processor.tokenizer
        return f"{tokenizer.bos_token}[{speaker}]{words}{tokenizer.eos_token}"

    def _turn_ids(self, text: str, speaker_id: int) -> Any:
        return self.processor(text=self._turn(speaker_id, text), return_tensors="pt")["input_ids"][0]

    def _prefix(self, context: list[Segment]) -> tuple[Any, int]:
        """(embeddings [P, H] of the context turns with their audio, audio frames); the last few are cached, so a
        job's voice anchor goes through the codec once, not once per chunk, and jobs sharing the worker share the
        cache. Requests with the same context get the same tensor (the engine prefills it once)."""
        if not context:
            return None, 0
        audio = [_to_24k_mono(s) for s in context]
        cache_key = tuple((s.speaker, s.text, hashlib.sha256(a.tobytes()).hexdigest())
                          for s, a in zip(context, audio, strict=True))
        if cache_key in self._prefix_cache:
            self._prefix_cache[cache_key] = self._prefix_cache.pop(cache_key)  # most recently used last
            return self._prefix_cache[cache_key]
        import torch

        assert self.engine is not None
        marker = self.processor.audio_token + self.processor.audio_eos_token
        prompt = "".join(self._turn(s.speaker, s.text) + marker for s in context)
        inputs = self.processor(text=prompt, audio=audio, return_tensors="pt")
        values, cutoffs = inputs["input_values"][0, 0], [int(c) for c in inputs["input_values_cutoffs"][0] if c >= 0]
        bounds = zip([0, *cutoffs[:-1]], cutoffs, strict=True)
        encode = self.engine.encode_audio if self.codec is None else self.codec.encode
        codes = torch.cat([encode(values[a:b]) for a, b in bounds])
        self._prefix_cache[cache_key] = (self.engine.embed_prompt(inputs["input_ids"][0], codes), len(codes))
        while len(self._prefix_cache) > PREFIX_CACHE_SIZE:
            self._prefix_cache.pop(next(iter(self._prefix_cache)))
        return self._prefix_cache[cache_key]

    def cleanup(self) -> None:
        """Drop the weights and give GPU memory back to the driver."""
        import torch

        self.model = None
        self.engine = None
        self.codec = self._stream_codec = None
        self._prefix_cache = {}
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _place(model: Any, device: str, dtype: Any) -> None:
    """Each part on `device`: what computes (backbone, depth decoder, heads, text embeddings) in `dtype`, the Mimi
    codec in fp32, never rounded through bf16 (it decodes garbage in bf16), and every rotary frequency table
    recomputed in fp32 (a bf16 cast rounds it: ~1 rad of phase error by position 1,000)."""
    import torch

    from worker.models.engine import fp32_rotary

    for name, part in model.named_children():
        part.to(device=device, dtype=torch.float32 if name == "codec_model" else dtype)
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "rope_init_fn"):
            module.inv_freq = fp32_rotary(module, device).inv_freq


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
