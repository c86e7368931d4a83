"""CsmEngine: many CSM sequences decoded at once, with pre-allocated K/V caches and little Python per frame.

It runs the modules of a transformers `CsmForConditionalGeneration` layer by layer instead of `generate`:

- a batch of prompts, each after a prefix (its job's voice anchor) that it may share with other rows: each distinct
  prefix is prefilled once and its K/V copied into its rows (left-aligned, slots past its length masked); the rest of
  each prompt is left-padded *after* the prefix area, and position ids skip the padding, so a row sees exactly the
  positions and keys it would see alone, whichever jobs share its batch;
- a static K/V cache per layer ([batch, kv heads, slots, head dim]) for the backbone and a 32-slot one for the depth
  decoder, overwritten every frame;
- one backbone step and 31 depth-decoder steps per 80 ms frame, sampling with temperature / top-k by the exponential
  race (argmax of p / E, E ~ Exp(1)): each row draws its noise from its own `torch.Generator`, so a row's sample
  depends on its seed and its logits only, never on which rows share its batch. Top-k 1 is greedy (noise of ones);
- ids the codec cannot decode are never sampled; a row ends at a frame whose first 31 codes are all the end code
  (as transformers decides; that frame is not audio) or at its own frame cap; finished rows are dropped from the
  batch (CPU) so they cost nothing;
- on CUDA the 31 depth-decoder steps and the sampling of one frame are replayed as one CUDA graph (captured per batch
  size; eager again if capture fails).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from producer.request import DEFAULT_TEMPERATURE, DEFAULT_TOP_K

__all__ = ["CsmEngine", "Sampling", "compute_dtype", "fp32_rotary", "on_device"]

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.25  # drop finished rows once this share of the batch has finished
MAX_GRAPHS = 16  # captured depth-decoder graphs kept (batch size x top-k); batches across jobs vary in size


@dataclass(frozen=True)
class Sampling:
    """How one row picks its codes: top-k 1 is greedy."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.top_k <= 1 or self.temperature <= 0


def compute_dtype(device: str) -> torch.dtype:
    """bf16 where the hardware multiplies bf16 natively (Ampere+ GPUs; CPUs with AMX or AVX512-BF16), else fp32.

    On a CPU without bf16 arithmetic (AVX2 only) a bf16 matmul is emulated and runs ~4x slower than fp32.
    """
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def fp32_rotary(rotary: Any, device: torch.device | str) -> Any:
    """A fresh copy of a transformers rotary embedding, its frequencies computed in fp32 from the config: a model
    cast to bf16 as a whole rounds `inv_freq` too, a phase error of ~1 rad by position 1,000."""
    return type(rotary)(config=rotary.config, device=device)


def on_device(device: torch.device | str) -> AbstractContextManager[Any]:
    """Make `device` current for CUDA calls that use the current device (streams, graphs) on a cuda:N model."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _Stack:
    """One decoder stack (the backbone or the depth decoder) against its own K/V tensors."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        config = model.config
        self.layers, self.norm = list(model.layers), model.norm
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        positions = torch.arange(config.max_position_embeddings, device=device)[None]
        rotary = fp32_rotary(model.rotary_emb, device)
        cos, sin = rotary(torch.empty(0, device=device, dtype=torch.float32), positions)
        self.cos, self.sin = cos[0].to(dtype), sin[0].to(dtype)  # [positions, head dim], computed in fp32, then cast
        self.k = self.v = torch.empty(0)

    def allocate(self, batch: int, slots: int) -> None:
        shape = (len(self.layers), batch, self.kv_heads, slots, self.head_dim)
        self.k = torch.zeros(shape, device=self.cos.device, dtype=self.cos.dtype)
        self.v = torch.zeros_like(self.k)

    def keep(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, start: int, mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, H] at cache slots start..start+T-1 with `positions` [B or 1, T]; attends to slots < start+T.

        `mask` [B, 1, T, start+T] (True = may attend); None means plain causal attention.
        """
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = x + self._attend(i, layer.self_attn, layer.input_layernorm(x), cos, sin, start, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

    def _attend(self, i: int, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, start: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        end = start + length
        self.k[i, :, :, start:end] = _rotate(k, cos, sin)
        self.v[i, :, :, start:end] = v
        keys, values = self.k[i, :, :, :end], self.v[i, :, :, :end]
        q = _rotate(q, cos, sin)
        if length == 1:  # fold the query heads of a group into the query axis: no repeated K/V
            folded = q.reshape(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask)
        else:
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=True)
        return attn.o_proj(out.reshape(batch, self.heads, length, self.head_dim).transpose(1, 2)
                           .reshape(batch, length, -1))


@dataclass
class _Batch:
    """The rows still in the batch (CPU side): original row, its sampling noise source, and the device tensors."""

    rows: list[int]
    generators: list[torch.Generator | None]
    valid: torch.Tensor  # [B, slots] bool: which cache slots each row may attend to
    positions: torch.Tensor  # [B] the position id of each row's next frame
    scale: torch.Tensor  # [B, 1] 1 / temperature
    kth: torch.Tensor  # [B, 1] top-k - 1

    def keep(self, live: list[int], device: torch.device) -> _Batch:
        index = torch.tensor(live, device=device)
        return _Batch([self.rows[i] for i in live], [self.generators[i] for i in live], self.valid[index],
                      self.positions[index], self.scale[index], self.kth[index])


class CsmEngine:
    """Batched CSM decoding on one device; the model's backbone and depth decoder in `dtype`, the codec in fp32."""

    def __init__(self, model: Any, use_cuda_graphs: bool | None = None) -> None:
        self.model = model
        self.config = model.config
        weight = model.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.codebooks = int(self.config.num_codebooks)
        self.vocab = int(self.config.vocab_size)
        self.eos = int(self.config.codebook_eos_token_id)
        self.backbone = _Stack(model.backbone_model, self.device, self.dtype)
        self.depth = _Stack(model.depth_decoder.model, self.device, self.dtype)
        self.heads = model.depth_decoder.codebooks_head.weight  # [codebooks - 1, hidden, vocab]
        self.suppress = torch.zeros(self.vocab, device=self.device)
        self.suppress[int(self.config.codec_config.codebook_size):] = float("-inf")
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self.depth_positions = torch.arange(self.codebooks, device=self.device)[None]
        self.kmax = 1
        self._graphs: dict[tuple[int, int], Any] = {}
        self.graph_failures: list[str] = []  # CUDA graph captures that failed (the depth decoder then runs eagerly)

    # ---- prompts -------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_prompt(self, input_ids: torch.Tensor, audio_codes: torch.Tensor | None = None) -> torch.Tensor:
        """[L, H] embeddings of one tokenized prompt: text tokens, audio frames (codes [frames, codebooks]) at the
        audio placeholders and the end-of-audio frame at each audio-end token, as transformers merges them."""
        ids = input_ids.to(self.device)
        embeds = self.model.embed_text_tokens(ids).to(self.dtype)
        audio = ids == self.config.audio_token_id
        if audio.any():
            assert audio_codes is not None and len(audio_codes) == int(audio.sum()), "audio codes do not fit"
            embeds[audio] = self.model.backbone_model.embed_tokens(audio_codes.to(self.device)[None])[0]
        ends = ids == self.config.audio_eos_token_id
        if ends.any():
            eos = torch.full((1, 1, self.codebooks), self.eos, device=self.device)
            embeds[ends] = self.model.backbone_model.embed_tokens(eos)[0, 0]
        return embeds

    @torch.inference_mode()
    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes [frames, codebooks] of a 24 kHz mono waveform, by the fp32 codec."""
        values = audio.to(self.device, torch.float32)[None, None]
        with on_device(self.device):
            codes = self.model.codec_model.encode(values).audio_codes
        return codes[0].transpose(0, 1)[:, : self.codebooks]

    # ---- decoding ------------------------------------------------------------------------------------------------

    def generate(self, prefix: torch.Tensor | None, prompts: list[torch.Tensor], caps: list[int],
                 sampling: list[Sampling]) -> list[torch.Tensor]:
        """generate_rows with one `prefix` shared by every row."""
        return self.generate_rows([prefix] * len(prompts), prompts, caps, sampling)

    @torch.inference_mode()
    def generate_rows(self, prefixes: list[torch.Tensor | None], prompts: list[torch.Tensor], caps: list[int],
                      sampling: list[Sampling], on_row: Callable[[int, torch.Tensor], None] | None = None,
                      on_frame: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Codes [frames_i, codebooks] (int64, on the device) for each prompt [S_i, H] after its prefix [P_i, H]
        (None: no prefix). Rows that share a prefix tensor share its prefill.

        Each row stops at its end frame (excluded) or after caps[i] frames; `on_row(i, codes)` is called as row i
        stops, while the others go on; `on_frame(i, codes)` with each audio frame [codebooks] of row i as it is made.
        """
        with on_device(self.device):
            return self._generate_rows(prefixes, prompts, caps, sampling, on_row or (lambda _row, _codes: None),
                                       on_frame)

    def _generate_rows(self, prefixes: list[torch.Tensor | None], prompts: list[torch.Tensor], caps: list[int],
                       sampling: list[Sampling], on_row: Callable[[int, torch.Tensor], None],
                       on_frame: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        lengths = [0 if p is None else len(p) for p in prefixes]
        prefix_len, width, caps = max(lengths), max(len(p) for p in prompts), list(caps)
        batch = self._start(prompts, lengths, width, max(caps), sampling)
        self._prefill_prefixes(prefixes)
        hidden = self._prefill(prompts, prefix_len, width, batch.valid)
        self.kmax = max(1 if s.greedy else min(s.top_k, self.vocab) for s in sampling)
        out = torch.zeros(len(prompts), max(caps), self.codebooks, dtype=torch.long, device=self.device)
        frames, slot = [0] * len(prompts), prefix_len + width
        reported: set[int] = set()
        while True:
            codes = self._frame(hidden, self._noise(batch.generators), batch.scale, batch.kth)
            ended = (codes[:, :-1] == self.eos).all(-1).tolist()
            going = [i for i, row in enumerate(batch.rows) if frames[row] < caps[row] and not ended[i]]
            self._store(out, codes, [batch.rows[i] for i in going], going, frames)
            for i in going:
                frames[batch.rows[i]] += 1
                if on_frame is not None:
                    on_frame(batch.rows[i], codes[i])
            for i, row in enumerate(batch.rows):
                if ended[i]:
                    caps[row] = frames[row]  # finished: nothing more is kept for this row
                if frames[row] >= caps[row] and row not in reported:
                    reported.add(row)
                    on_row(row, out[row, : frames[row]])
            live = [i for i, row in enumerate(batch.rows) if frames[row] < caps[row]]
            if not live:
                break
            if self._compact(len(live), len(batch.rows)):
                batch, codes = batch.keep(live, self.device), codes[torch.tensor(live, device=self.device)]
                self.backbone.keep(torch.tensor(live, device=self.device))
            batch.valid[:, slot] = True
            embeds = self.model.backbone_model.embed_tokens(codes[:, None, :])
            hidden = self.backbone.forward(embeds, batch.positions[:, None], slot,
                                           batch.valid[:, None, None, : slot + 1])[:, -1]
            batch.positions, slot = batch.positions + 1, slot + 1
        return [out[row, : frames[row]] for row in range(len(prompts))]

    def _start(self, prompts: list[torch.Tensor], lengths: list[int], width: int, cap: int,
               sampling: list[Sampling]) -> _Batch:
        prefix_len = max(lengths)
        self.backbone.allocate(len(prompts), prefix_len + width + cap)
        valid = torch.zeros(len(prompts), prefix_len + width + cap, dtype=torch.bool, device=self.device)
        for row, (prompt, length) in enumerate(zip(prompts, lengths, strict=True)):
            valid[row, :length] = True
            valid[row, prefix_len + width - len(prompt): prefix_len + width] = True
        positions = torch.tensor([length + len(p) for p, length in zip(prompts, lengths, strict=True)],
                                 device=self.device)
        scale = torch.tensor([1.0 if s.greedy else 1.0 / s.temperature for s in sampling], device=self.device)
        kth = torch.tensor([0 if s.greedy else min(s.top_k, self.vocab) - 1 for s in sampling], device=self.device)
        return _Batch(list(range(len(prompts))), [self._generator(s) for s in sampling], valid, positions,
                      scale[:, None], kth[:, None])

    def _store(self, out: torch.Tensor, codes: torch.Tensor, rows: list[int], at: list[int], frames: list[int]) -> None:
        if rows:
            where = torch.tensor(rows, device=self.device), torch.tensor([frames[r] for r in rows], device=self.device)
            out[where] = codes[torch.tensor(at, device=self.device)]

    def _compact(self, live: int, batch: int) -> bool:
        """Drop finished rows once enough have finished (not under CUDA graphs, which are captured per batch size)."""
        return not self.use_cuda_graphs and live <= batch * (1 - COMPACT_FRACTION)

    def _prefill_prefixes(self, prefixes: list[torch.Tensor | None]) -> None:
        """Each distinct prefix once, at batch 1; its K/V are then copied into the rows it leads."""
        rows_k, rows_v = self.backbone.k, self.backbone.v
        rows_of: dict[int, list[int]] = {}
        for row, prefix in enumerate(prefixes):
            if prefix is not None and len(prefix):
                rows_of.setdefault(id(prefix), []).append(row)
        for rows in rows_of.values():
            prefix = prefixes[rows[0]]
            assert prefix is not None
            length = len(prefix)
            self.backbone.allocate(1, length)
            self.backbone.forward(prefix.to(self.dtype)[None], torch.arange(length, device=self.device)[None], 0, None)
            index = torch.tensor(rows, device=self.device)
            rows_k[:, index, :, :length] = self.backbone.k
            rows_v[:, index, :, :length] = self.backbone.v
        self.backbone.k, self.backbone.v = rows_k, rows_v

    def _prefill(self, prompts: list[torch.Tensor], prefix_len: int, width: int, valid: torch.Tensor) -> torch.Tensor:
        """Each row's own prompt, right-aligned after the prefix; the last hidden state of every row [B, H]."""
        x = torch.zeros(len(prompts), width, prompts[0].shape[-1], device=self.device, dtype=self.dtype)
        for row, prompt in enumerate(prompts):
            x[row, width - len(prompt):] = prompt.to(self.dtype)
        keys = valid[:, : prefix_len + width]
        positions = (keys.long().cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        slots = torch.arange(prefix_len + width, device=self.device)
        queries = slots[prefix_len:, None]
        mask = ((slots[None] <= queries)[None] & keys[:, None]) | (slots[None] == queries)[None]
        return self.backbone.forward(x, positions, prefix_len, mask[:, None])[:, -1]

    # ---- one frame -----------------------------------------------------------------------------------------------

    def _generator(self, sampling: Sampling) -> torch.Generator | None:
        if sampling.greedy:
            return None
        generator = torch.Generator(device=self.device)
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        return generator

    def _noise(self, generators: list[torch.Generator | None]) -> torch.Tensor:
        """E ~ Exp(1) per row, codebook and id, from the row's own generator; ones (greedy) where it has none."""
        noise = torch.ones(len(generators), self.codebooks, self.vocab, device=self.device)
        for i, generator in enumerate(generators):
            if generator is not None:
                noise[i].exponential_(generator=generator)
        return noise

    def _pick(self, logits: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
        """Temperature, top-k and the codec's ids, then the exponential race: argmax(log p - log E)."""
        scores = logits.float() * scale + self.suppress
        threshold = scores.topk(self.kmax, dim=-1).values.gather(-1, kth)
        scores = scores.masked_fill(scores < threshold, float("-inf"))
        return (scores - noise.log()).argmax(-1)

    def _frame(self, hidden: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
        """The codes of one frame [B, codebooks] from the backbone's last hidden state [B, H]."""
        if self.use_cuda_graphs:
            graph = self._graph(hidden.shape[0])
            if graph is not None:
                return graph(hidden, noise, scale, kth)
        if self.depth.k.shape[1:2] != hidden.shape[:1]:
            self.depth.allocate(hidden.shape[0], self.codebooks)
        return self._depth(hidden, noise, scale, kth)

    def _depth(self, hidden: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor, kth: torch.Tensor) -> torch.Tensor:
        """Codebook 0 from the backbone, then 31 depth-decoder steps; static shapes, no host sync (graph-safe)."""
        decoder, positions = self.model.depth_decoder.model, self.depth_positions
        code = self._pick(self.model.lm_head(hidden), noise[:, 0], scale, kth)
        codes = [code]
        x = decoder.inputs_embeds_projector(torch.stack([hidden, decoder.embed_tokens(code)], dim=1))
        out = self.depth.forward(x, positions[:, :2], 0, None)
        for j in range(1, self.codebooks):
            code = self._pick(out[:, -1] @ self.heads[j - 1], noise[:, j], scale, kth)
            codes.append(code)
            if j < self.codebooks - 1:
                x = decoder.inputs_embeds_projector(decoder.embed_tokens(code + j * self.vocab))[:, None]
                out = self.depth.forward(x, positions[:, j + 1: j + 2], j + 1, None)
        return torch.stack(codes, dim=1)

    def _graph(self, batch: int) -> Any:
        key = (batch, self.kmax)
        if key not in self._graphs and len(self._graphs) >= MAX_GRAPHS:  # each holds its own memory pool
            del self._graphs[next(iter(self._graphs))]
        if key not in self._graphs:
            try:
                self._graphs[key] = _DepthGraph(self, batch)
            except Exception as e:  # capture is an optimization: never a reason to fail a job
                failure = f"batch {batch}: {type(e).__name__}: {str(e)[:200]}"
                log.warning("CUDA graph capture failed at %s; running the depth decoder eagerly", failure)
                self.graph_failures = [*self.graph_failures[-7:], failure]
                self._graphs[key] = None
        return self._graphs[key]

    # ---- audio ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """24 kHz fp32 waveform of codes [frames, codebooks] through the codec."""
        if len(codes) == 0:
            return torch.zeros(0)
        with on_device(self.device):
            values = self.model.codec_model.decode(codes.transpose(0, 1)[None]).audio_values
        return values[0, 0].float().cpu()


class _DepthGraph:
    """The depth decoder and sampling of one frame, captured as a CUDA graph for one batch size."""

    def __init__(self, engine: CsmEngine, batch: int) -> None:
        hidden_size = engine.model.lm_head.weight.shape[1]
        self.hidden = torch.zeros(batch, hidden_size, device=engine.device, dtype=engine.dtype)
        self.noise = torch.ones(batch, engine.codebooks, engine.vocab, device=engine.device)
        self.scale = torch.ones(batch, 1, device=engine.device)
        self.kth = torch.zeros(batch, 1, dtype=torch.long, device=engine.device)
        engine.depth.allocate(batch, engine.codebooks)
        self.kv = engine.depth.k, engine.depth.v  # the graph writes into these: keep them alive
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                engine._depth(self.hidden, self.noise, self.scale, self.kth)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.codes = engine._depth(self.hidden, self.noise, self.scale, self.kth)

    def __call__(self, hidden: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor,
                 kth: torch.Tensor) -> torch.Tensor:
        self.hidden.copy_(hidden)
        self.noise.copy_(noise)
        self.scale.copy_(scale)
        self.kth.copy_(kth)
        self.graph.replay()
        return self.codes.clone()
