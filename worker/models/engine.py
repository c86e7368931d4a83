"""CsmEngine: many CSM sequences decoded at once, with K/V caches and little Python per frame.

It runs the modules of a transformers `CsmForConditionalGeneration` layer by layer instead of `generate`:

- rows (worker/models/slots.py), each a prompt after a prefix (its job's voice anchor) that it may share with rows
  handed over with it: each distinct prefix is prefilled once and its K/V copied into its rows. Each row's prefix,
  prompt and frames lie contiguous from cache slot 0 of its own batch slot, so it sees exactly the positions and
  keys it would see alone, whichever rows share its batch (slots past its length are masked);
- continuous batching: a row ends at a frame whose first 31 codes are all the end code (as transformers decides;
  that frame is not audio) or at its own frame cap, is handed on at once (`on_row`), and its batch slot is taken by
  the next row the caller's `refill` hands over, prefilled after its own prefix while the others go on; without
  rows to refill, finished rows are dropped from the batch (CPU) so they cost nothing;
- one backbone step and 31 depth-decoder steps per 80 ms frame, sampling with temperature / top-k by the exponential
  race (argmax of p / E, E ~ Exp(1)): each row draws its noise from its own `torch.Generator`, so a row's sample
  depends on its seed and its logits only, never on which rows share its batch. Top-k 1 is greedy (noise of ones);
  ids the codec cannot decode are never sampled;
- on CUDA the 31 depth-decoder steps and the sampling of one frame are replayed as one CUDA graph (captured per batch
  size, worker/models/depth_graph.py; eager again if capture fails); the batch then keeps its size (free slots are
  decoded and ignored) so one graph serves the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from worker.models.depth_graph import DepthGraph
from worker.models.slots import Row, Sampling, Slots
from worker.models.stack import Stack, fp32_rotary

__all__ = ["CsmEngine", "OnFrame", "OnRow", "Refill", "Row", "Sampling", "compute_dtype", "fp32_rotary",
           "on_device"]

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.25  # drop finished rows once this share of the batch has finished (and none waits)
MAX_PREFIXES = 16  # prefixes' K/V kept within one run, for the rows refilled after them
MAX_GRAPHS = 16  # captured depth-decoder graphs kept (batch size x top-k); batches across jobs vary in size

OnRow = Callable[[Row, torch.Tensor], None]  # (row, its codes [frames, codebooks]) as the row ends
OnFrame = Callable[[Row, torch.Tensor], None]  # (row, the codes [codebooks] of the frame it just made)
Refill = Callable[[int], list[Row]]  # (free slots) -> rows to start now, at most that many


def compute_dtype(device: str) -> torch.dtype:
    """bf16 where the hardware multiplies bf16 natively (Ampere+ GPUs; CPUs with AMX or AVX512-BF16), else fp32.

    On a CPU without bf16 arithmetic (AVX2 only) a bf16 matmul is emulated and runs ~4x slower than fp32.
    """
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def on_device(device: torch.device | str) -> AbstractContextManager[Any]:
    """Make `device` current for CUDA calls that use the current device (streams, graphs) on a cuda:N model."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


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
        self.backbone = Stack(model.backbone_model, self.device, self.dtype)
        self.depth = Stack(model.depth_decoder.model, self.device, self.dtype)
        self.heads = model.depth_decoder.codebooks_head.weight  # [codebooks - 1, hidden, vocab]
        self.suppress = torch.zeros(self.vocab, device=self.device)
        self.suppress[int(self.config.codec_config.codebook_size):] = float("-inf")
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self.depth_positions = torch.arange(self.codebooks, device=self.device)[None]
        self.kmax = 1
        self._prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
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

    def generate_rows(self, prefixes: list[torch.Tensor | None], prompts: list[torch.Tensor], caps: list[int],
                      sampling: list[Sampling], on_row: Callable[[int, torch.Tensor], None] | None = None,
                      on_frame: Callable[[int, torch.Tensor], None] | None = None) -> list[torch.Tensor]:
        """Codes [frames_i, codebooks] (int64, on the device) for each prompt [S_i, H] after its prefix [P_i, H]
        (None: no prefix), all in one batch. Rows that share a prefix tensor share its prefill.

        Each row stops at its end frame (excluded) or after caps[i] frames; `on_row(i, codes)` is called as row i
        stops, while the others go on; `on_frame(i, codes)` with each frame row i keeps.
        """
        rows = [Row(*fields, streams=on_frame is not None)
                for fields in zip(prefixes, prompts, caps, sampling, strict=True)]
        index = {row: i for i, row in enumerate(rows)}
        out: list[torch.Tensor] = [torch.empty(0)] * len(rows)

        def ended(row: Row, codes: torch.Tensor) -> None:
            out[index[row]] = codes
            if on_row is not None:
                on_row(index[row], codes)

        frame = None if on_frame is None else lambda row, codes: on_frame(index[row], codes)
        self.run(rows, ended, on_frame=frame)
        return out

    @torch.inference_mode()
    def run(self, rows: list[Row], on_row: OnRow, refill: Refill | None = None, size: int | None = None,
            on_frame: OnFrame | None = None) -> None:
        """Decode `rows` and then whatever `refill(free slots)` hands over, at most `size` rows at once (default:
        len(rows)), until no row is left and refill has none; `on_row` hears of each row as it ends, `on_frame` of
        each frame of the rows that stream (Row.streams)."""
        with on_device(self.device):
            self._run(rows, on_row, refill, size or max(1, len(rows)), on_frame)

    def _run(self, rows: list[Row], on_row: OnRow, refill: Refill | None, size: int,
             on_frame: OnFrame | None) -> None:
        slots = Slots(self.device, self.codebooks)
        self.backbone.allocate(0, 0)
        self._prefix_kv = {}
        hidden = self._admit(slots, rows, None, size)
        while hidden is not None:
            codes = self._frame(hidden, self._noise(slots.generators), slots.scale, slots.kth)
            going = self._advance(slots, codes, on_row, on_frame)
            free = size - len(going)
            new = refill(free) if refill is not None and free > 0 else []
            assert len(new) <= free, f"refill handed over {len(new)} rows for {free} free slots"
            if not going and not new:
                return
            if not new and self._compact(len(going), len(slots)):
                codes = codes[torch.tensor(going, device=self.device)]
                slots.keep(going)
                self.backbone.keep(torch.tensor(going, device=self.device))
                going = list(range(len(going)))
            hidden = self._step(slots, codes, going) if going else None
            hidden = self._admit(slots, new, hidden, size) if new else hidden

    def _advance(self, slots: Slots, codes: torch.Tensor, on_row: OnRow, on_frame: OnFrame | None) -> list[int]:
        """Keep each live row's new frame; hand on the rows that ended or reached their cap; the slots going on."""
        ended = (codes[:, :-1] == self.eos).all(-1).tolist()
        kept = [i for i in slots.live() if not ended[i]]
        slots.store(codes, kept)
        if on_frame is not None:
            for i in kept:
                if slots.rows[i].streams:  # type: ignore[union-attr]
                    on_frame(slots.rows[i], codes[i])  # type: ignore[arg-type]
        going = []
        for i in slots.live():
            row = slots.rows[i]
            assert row is not None
            if ended[i] or slots.frames[i] >= row.cap:
                on_row(*slots.release(i))
            else:
                going.append(i)
        return going

    def _step(self, slots: Slots, codes: torch.Tensor, going: list[int]) -> torch.Tensor:
        """One backbone step for every slot (each row at its own cache slot); the rows `going` move on a frame."""
        lengths = torch.tensor(slots.lengths, device=self.device)
        keys = torch.arange(max(slots.lengths) + 1, device=self.device)
        mask = (keys[None] <= lengths[:, None])[:, None, None]
        embeds = self.model.backbone_model.embed_tokens(codes[:, None, :])
        hidden = self.backbone.forward(embeds, lengths[:, None], lengths, mask)[:, -1]
        for i in going:
            slots.lengths[i] += 1
        return hidden

    def _admit(self, slots: Slots, rows: list[Row], hidden: torch.Tensor | None, size: int) -> torch.Tensor | None:
        """Prefill `rows` into free slots (more slots if needed); the hidden state of every slot [B, H]."""
        if not rows:
            return hidden
        free = slots.free()[: len(rows)]
        batch = len(slots) + len(rows) - len(free)
        if self.use_cuda_graphs:  # one batch size for the whole run: one graph
            batch = max(batch, size)
        width = max([row.length + row.cap for row in rows] + [self.backbone.k.shape[3]])
        slots.grow(batch, max(row.cap for row in rows))
        if (len(slots), width) != (self.backbone.k.shape[1], self.backbone.k.shape[3]):
            self.backbone.resize(len(slots), width)
        free += slots.free()[len(free): len(rows)]
        prefilled = self._prefill_rows(rows, free)
        out = torch.zeros(len(slots), prefilled.shape[-1], device=self.device, dtype=self.dtype)
        if hidden is not None:
            out[: len(hidden)] = hidden
        out[torch.tensor(free, device=self.device)] = prefilled
        for slot, row in zip(free, rows, strict=True):
            slots.place(slot, row, self._generator(row.sampling), self.vocab)
        self.kmax = max(1 if r.sampling.greedy else min(r.sampling.top_k, self.vocab) for r in slots.rows if r)
        return out

    def _prefill_rows(self, rows: list[Row], slots: list[int]) -> torch.Tensor:
        """Prefill `rows` together (each prompt right-aligned after the longest prefix), then copy each row's K/V
        contiguous into its slot of the batch cache; the last hidden state of each [len(rows), H]."""
        batch_k, batch_v = self.backbone.k, self.backbone.v
        prefix_len, width = max(r.prefix_len for r in rows), max(len(r.prompt) for r in rows)
        self.backbone.allocate(len(rows), prefix_len + width)
        valid = torch.zeros(len(rows), prefix_len + width, dtype=torch.bool, device=self.device)
        for i, row in enumerate(rows):
            valid[i, : row.prefix_len] = True
            valid[i, prefix_len + width - len(row.prompt):] = True
        self._prefill_prefixes([r.prefix for r in rows])
        hidden = self._prefill(rows, prefix_len, width, valid)
        for i, (row, slot) in enumerate(zip(rows, slots, strict=True)):
            for batch, rows_kv in ((batch_k, self.backbone.k), (batch_v, self.backbone.v)):
                batch[:, slot, :, : row.prefix_len] = rows_kv[:, i, :, : row.prefix_len]
                batch[:, slot, :, row.prefix_len: row.length] = rows_kv[:, i, :, prefix_len + width - len(row.prompt):]
        self.backbone.k, self.backbone.v = batch_k, batch_v
        return hidden

    def _compact(self, live: int, batch: int) -> bool:
        """Drop finished rows once enough have finished (not under CUDA graphs, which are captured per batch size)."""
        return not self.use_cuda_graphs and live <= batch * (1 - COMPACT_FRACTION)

    def _prefill_prefixes(self, prefixes: list[torch.Tensor | None]) -> None:
        """Each distinct prefix once per run, at batch 1 (kept for rows refilled after it later in the run); its K/V
        are copied into the rows it leads."""
        rows_k, rows_v = self.backbone.k, self.backbone.v
        rows_of: dict[int, list[int]] = {}
        for row, prefix in enumerate(prefixes):
            if prefix is not None and len(prefix):
                rows_of.setdefault(id(prefix), []).append(row)
        for key, rows in rows_of.items():
            prefix = prefixes[rows[0]]
            assert prefix is not None
            if key not in self._prefix_kv:
                while len(self._prefix_kv) >= MAX_PREFIXES:
                    del self._prefix_kv[next(iter(self._prefix_kv))]
                self.backbone.allocate(1, len(prefix))
                positions = torch.arange(len(prefix), device=self.device)[None]
                self.backbone.forward(prefix.to(self.dtype)[None], positions, 0, None)
                self._prefix_kv[key] = (prefix, self.backbone.k, self.backbone.v)  # the tensor: its id stays its own
            _, k, v = self._prefix_kv[key]
            index = torch.tensor(rows, device=self.device)
            rows_k[:, index, :, : len(prefix)] = k
            rows_v[:, index, :, : len(prefix)] = v
        self.backbone.k, self.backbone.v = rows_k, rows_v

    def _prefill(self, rows: list[Row], prefix_len: int, width: int, valid: torch.Tensor) -> torch.Tensor:
        """Each row's own prompt, right-aligned after the prefixes; the last hidden state of every row [B, H]."""
        x = torch.zeros(len(rows), width, rows[0].prompt.shape[-1], device=self.device, dtype=self.dtype)
        for i, row in enumerate(rows):
            x[i, width - len(row.prompt):] = row.prompt.to(self.dtype)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        slots = torch.arange(prefix_len + width, device=self.device)
        queries = slots[prefix_len:, None]
        mask = ((slots[None] <= queries)[None] & valid[:, None]) | (slots[None] == queries)[None]
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
                self._graphs[key] = DepthGraph(self, batch)
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
