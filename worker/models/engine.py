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
- one backbone step and 31 depth-decoder steps per 80 ms frame, with few operators each (worker/models/stack.py:
  fused weights, one rotary and one cache write per layer), sampling with temperature / top-k by the Gumbel race
  over each row's top k candidates (argmax of log p - log E, E ~ Exp(1)): each row draws its k noises per codebook
  from its own `torch.Generator`, so a row's sample depends on its seed and its logits only, never on which rows
  share its batch. Top-k 1 is greedy; ids the codec cannot decode are never sampled;
- no host sync in the steady state: cache positions, frames kept and end flags stay on the device (slots.py); the
  host reads the end state every `check_every` frames (or at a row's cap), so a row's end is seen up to
  check_every - 1 frames late, and the frames it made after its end frame are never kept;
- on CUDA the 31 depth-decoder steps and the sampling of one frame are replayed as one CUDA graph (captured per
  batch-size and top-k bucket, least recently used evicted, worker/models/depth_graph.py; eager again if capture
  fails); the batch then keeps its size (free slots are decoded and ignored) so one graph serves the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.nn.functional as F

from worker.models.compiled import CompiledStep
from worker.models.depth_graph import DepthGraph, GraphCache, batch_bucket, k_bucket
from worker.models.slots import Row, Sampling, Slots, keep_frame
from worker.models.stack import Stack, fp32_rotary

__all__ = ["CsmEngine", "OnFrame", "OnRow", "Refill", "Row", "Sampling", "compute_dtype", "fp32_rotary",
           "on_device"]

log = logging.getLogger(__name__)

COMPACT_FRACTION = 0.25  # drop finished rows once this share of the batch has finished (and none waits)
MAX_PREFIXES = 16  # prefixes' K/V kept within one run, for the rows refilled after them
MAX_GRAPHS = 16  # captured depth-decoder graphs kept (batch-size bucket x top-k bucket), least recently used out
CHECK_EVERY = 8  # frames between reads of the rows' end state, the loop's one host sync: an end is seen <= 7 late

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

    def __init__(self, model: Any, use_cuda_graphs: bool | None = None, check_every: int = CHECK_EVERY) -> None:
        self.model = model
        self.config = model.config
        weight = model.lm_head.weight
        self.device, self.dtype = weight.device, weight.dtype
        self.codebooks = int(self.config.num_codebooks)
        self.vocab = int(self.config.vocab_size)
        self.eos = int(self.config.codebook_eos_token_id)
        self.backbone = Stack(model.backbone_model, self.device, self.dtype)
        self.depth = Stack(model.depth_decoder.model, self.device, self.dtype)
        # Heads cut to the ids the codec decodes (the rest, padding, is never sampled): [vocab cut, hidden] for
        # codebook 0, [codebooks - 1, hidden, vocab cut] for the others. Views: no weight is held twice.
        self.ids = int(self.config.codec_config.codebook_size)
        self.head0 = weight[: self.ids]
        self.heads = model.depth_decoder.codebooks_head.weight[..., : self.ids]
        self.use_cuda_graphs = self.device.type == "cuda" if use_cuda_graphs is None else use_cuda_graphs
        self.depth_inputs = self._depth_inputs(model.depth_decoder.model)  # [codebooks x vocab, depth hidden]
        self.check_every = max(1, check_every)
        self._open = torch.zeros((), device=self.device, dtype=self.dtype)  # float attention mask: may attend
        self._shut = torch.full((), float("-inf"), device=self.device, dtype=self.dtype)
        self.kmax = 1
        self.top_k: list[int] = []  # per slot: candidates its row samples from (1: greedy or free)
        self.ranks = torch.zeros(0, 1, device=self.device)  # [B, kmax]: 0 for a row's top-k candidates, else -inf
        self._draws = torch.ones(0, self.codebooks, 1, device=self.device)  # [B, codebooks, kmax]: Exp(1) draws
        self._pinned: torch.Tensor | None = None
        self._prefix_kv: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._graphs = GraphCache(MAX_GRAPHS)
        self._graph_pool: Any = None
        self.graph_failures: list[str] = []  # CUDA graph captures that failed (the depth decoder then runs eagerly)
        self.compile_failures: list[str] = []  # torch.compile failures (that step then runs eagerly)
        self.depth_frame: Callable[..., torch.Tensor] = self._depth  # what _frame and the depth graphs run
        self.backbone_step: Callable[..., torch.Tensor] = self._backbone
        self.store_frame: Callable[..., None] = keep_frame
        model.requires_grad_(False)  # the caller's model, for inference only: torch.compile would trace for autograd

    @torch.inference_mode()
    def _depth_inputs(self, depth: Any) -> torch.Tensor:
        """The depth decoder's input for every (codebook, code): its embedding through the projector, computed once
        here rather than per step (one matmul less per codebook step; it costs a [codebooks x vocab, depth hidden]
        table, ~134 MB in bf16 for CSM-1B)."""
        return torch.cat([depth.inputs_embeds_projector(part) for part in depth.embed_tokens.weight.split(4096)])

    @property
    def compiled(self) -> bool:
        return isinstance(self.depth_frame, CompiledStep)

    def compile_steps(self) -> None:
        """Run the depth decoder's frame, the backbone step and the frame store through torch.compile
        (worker/models/compiled.py); on CUDA the compiled depth frame is what the depth graphs capture."""
        self.depth_frame = CompiledStep(self._depth, "depth decoder", self.compile_failures)
        self.backbone_step = CompiledStep(self._backbone, "backbone step", self.compile_failures)
        self.store_frame = CompiledStep(keep_frame, "frame store", self.compile_failures)
        self._graphs = GraphCache(MAX_GRAPHS)

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
        hidden, made = self._admit(slots, rows, None, size), 0
        while hidden is not None:
            codes = self._frame(hidden, self._noise(slots), self.ranks, slots.scale)
            self.store_frame(codes, slots.state, slots.out, slots.index, self.eos)
            slots.stepped()
            made += 1
            streaming = on_frame is not None and any(row is not None and row.streams for row in slots.rows)
            every = 1 if streaming else self.check_every  # a streaming row's frames are handed on as they are made
            capped = any(row is not None and slots.frames[i] >= row.cap for i, row in enumerate(slots.rows))
            if capped or made % every == 0:
                self._check(slots, codes, on_row, on_frame)
            going = slots.live()
            free = size - len(going)
            new = refill(free) if refill is not None and free > 0 else []
            assert len(new) <= free, f"refill handed over {len(new)} rows for {free} free slots"
            if not going and not new:
                return
            if not new and self._compact(len(going), len(slots)):
                index = torch.tensor(going, device=self.device)
                codes = codes[index]
                slots.keep(going)
                self.backbone.keep(index)
                self._rank(slots)
            hidden = self._step(slots, codes) if going else None
            hidden = self._admit(slots, new, hidden, size) if new else hidden

    def _check(self, slots: Slots, codes: torch.Tensor, on_row: OnRow, on_frame: OnFrame | None) -> None:
        """Read the end state of every row (the loop's one host sync, every `check_every` frames or at a row's
        cap); hand on the rows that ended (their frames after the end frame were never kept) or reached their cap.
        While a row streams (Row.streams) this runs every frame and hands its kept frame to `on_frame` first."""
        kept, done = self._read(slots.state)
        live = slots.live()
        if on_frame is not None:
            for i in live:
                if not done[i] and slots.rows[i].streams:  # type: ignore[union-attr]
                    on_frame(slots.rows[i], codes[i])  # type: ignore[arg-type]
        for i in live:
            row = slots.rows[i]
            assert row is not None
            if done[i] or slots.frames[i] >= row.cap:
                on_row(*slots.release(i, kept[i]))

    def _read(self, state: torch.Tensor) -> list[list[int]]:
        """The host's copy of `state`: on CUDA through pinned memory, a non-blocking copy waited for by its event."""
        if self.device.type != "cuda":
            return state.tolist()
        if self._pinned is None or self._pinned.shape != state.shape:
            self._pinned = torch.empty(state.shape, dtype=state.dtype, pin_memory=True)
        self._pinned.copy_(state, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        copied.synchronize()
        return self._pinned.tolist()

    def _step(self, slots: Slots, codes: torch.Tensor) -> torch.Tensor:
        """One backbone step for every slot; the rows then move on one cache slot."""
        hidden = self.backbone_step(codes, slots.position, slots.index, max(slots.lengths) + 1, slots.state[1])
        slots.moved()
        return hidden

    def _backbone(self, codes: torch.Tensor, position: torch.Tensor, index: torch.Tensor, width: int,
                  done: torch.Tensor) -> torch.Tensor:
        """The backbone's hidden state [B, H] after the frame `codes` [B, codebooks], each row at its own cache
        slot `position`, attending to the first `width` slots; all indices on the device, one float attention mask
        for all layers. The rows not `done` then move on one slot."""
        keys = torch.arange(width, device=self.device)
        mask = torch.where(keys <= position[:, None], self._open, self._shut)[:, None, None]
        embeds = self.model.backbone_model.embed_tokens(codes[:, None, :])
        rotary = self.backbone.rotary(position[:, None])
        hidden = self.backbone.forward(embeds, rotary, position, mask, index)[:, -1]
        position.add_(1 - done)
        return hidden

    def _admit(self, slots: Slots, rows: list[Row], hidden: torch.Tensor | None, size: int) -> torch.Tensor | None:
        """Prefill `rows` into free slots (more slots if needed); the hidden state of every slot [B, H]."""
        if not rows:
            return hidden
        free = slots.free()[: len(rows)]
        batch = len(slots) + len(rows) - len(free)
        if self.use_cuda_graphs:  # one batch size for the whole run: one graph
            batch = max(batch, size)
        width = max([row.length + row.cap for row in rows] + [self.backbone.width])
        slots.grow(batch, max(row.cap for row in rows))
        if (len(slots), width) != (self.backbone.batch, self.backbone.width):
            self.backbone.resize(len(slots), width)
        free += slots.free()[len(free): len(rows)]
        prefilled = self._prefill_rows(rows, free)
        out = torch.zeros(len(slots), prefilled.shape[-1], device=self.device, dtype=self.dtype)
        if hidden is not None:
            out[: len(hidden)] = hidden
        out[torch.tensor(free, device=self.device)] = prefilled
        for slot, row in zip(free, rows, strict=True):
            slots.place(slot, row, self._generator(row.sampling))
        self._rank(slots)
        return out

    def _rank(self, slots: Slots) -> None:
        """Each slot's top-k (1: greedy or free), their largest, and the mask of each row's candidates."""
        self.top_k = [1 if r is None or r.sampling.greedy else min(r.sampling.top_k, self.ids) for r in slots.rows]
        self.kmax = k_bucket(max(self.top_k), self.ids)  # few widths: few graphs
        candidates = torch.arange(self.kmax, device=self.device) < torch.tensor(self.top_k, device=self.device)[:, None]
        self.ranks = torch.zeros(candidates.shape, device=self.device).masked_fill_(~candidates, float("-inf"))
        self._draws = torch.ones(len(slots), self.codebooks, self.kmax, device=self.device)

    def _prefill_rows(self, rows: list[Row], slots: list[int]) -> torch.Tensor:
        """Prefill `rows` together (each prompt right-aligned after the longest prefix), then copy each row's K/V
        contiguous into its slot of the batch cache; the last hidden state of each [len(rows), H]."""
        batch_kv = self.backbone.kv
        prefix_len, width = max(r.prefix_len for r in rows), max(len(r.prompt) for r in rows)
        self.backbone.allocate(len(rows), prefix_len + width)
        valid = torch.zeros(len(rows), prefix_len + width, dtype=torch.bool, device=self.device)
        for i, row in enumerate(rows):
            valid[i, : row.prefix_len] = True
            valid[i, prefix_len + width - len(row.prompt):] = True
        self._prefill_prefixes([r.prefix for r in rows])
        hidden = self._prefill(rows, prefix_len, width, valid)
        rows_kv = self.backbone.kv
        for i, (row, slot) in enumerate(zip(rows, slots, strict=True)):
            batch_kv[:, slot, :, : row.prefix_len] = rows_kv[:, i, :, : row.prefix_len]
            batch_kv[:, slot, :, row.prefix_len: row.length] = rows_kv[:, i, :, prefix_len + width - len(row.prompt):]
        self.backbone.kv = batch_kv
        return hidden

    def _compact(self, live: int, batch: int) -> bool:
        """Drop finished rows once enough have finished (not under CUDA graphs, which are captured per batch size)."""
        return not self.use_cuda_graphs and live <= batch * (1 - COMPACT_FRACTION)

    def _prefill_prefixes(self, prefixes: list[torch.Tensor | None]) -> None:
        """Each distinct prefix once per run, at batch 1 (kept for rows refilled after it later in the run); its K/V
        are copied into the rows it leads."""
        rows_kv = self.backbone.kv
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
                self.backbone.forward(prefix.to(self.dtype)[None], self.backbone.rotary(positions), 0, None)
                self._prefix_kv[key] = (prefix, self.backbone.kv)  # the tensor: its id stays its own
            _, kv = self._prefix_kv[key]
            rows_kv[:, torch.tensor(rows, device=self.device), :, : len(prefix)] = kv
        self.backbone.kv = rows_kv

    def _prefill(self, rows: list[Row], prefix_len: int, width: int, valid: torch.Tensor) -> torch.Tensor:
        """Each row's own prompt, right-aligned after the prefixes; the last hidden state of every row [B, H]."""
        x = torch.zeros(len(rows), width, rows[0].prompt.shape[-1], device=self.device, dtype=self.dtype)
        for i, row in enumerate(rows):
            x[i, width - len(row.prompt):] = row.prompt.to(self.dtype)
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)[:, prefix_len:]
        slots = torch.arange(prefix_len + width, device=self.device)
        queries = slots[prefix_len:, None]
        mask = ((slots[None] <= queries)[None] & valid[:, None]) | (slots[None] == queries)[None]
        return self.backbone.forward(x, self.backbone.rotary(positions), prefix_len, mask[:, None])[:, -1]

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

    def _noise(self, slots: Slots) -> torch.Tensor:
        """Exp(1) draws for each row's top-k candidates [B, codebooks, kmax] (the Gumbel noise is -log of them), by
        the row's own generator: its k per codebook, whatever shares the batch; 1 (no noise) for greedy rows."""
        for i, generator in enumerate(slots.generators):
            if generator is None:
                continue
            k = self.top_k[i]
            if k == self.kmax:  # contiguous: drawn in place, the same values as a fresh [codebooks, k] tensor
                self._draws[i].exponential_(generator=generator)
            else:
                self._draws[i, :, :k] = torch.empty(self.codebooks, k, device=self.device).exponential_(
                    generator=generator)
        return self._draws

    def _pick(self, logits: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Top-k, then the Gumbel race over the candidates at the row's temperature: argmax(log p / T + G) (top-k of
        logits / T is top-k of the logits: the temperature is applied to the k candidates only)."""
        logits = logits.float()
        if self.kmax == 1:
            return logits.argmax(-1)
        top = logits.topk(self.kmax, dim=-1)
        return top.indices.gather(-1, torch.addcmul(noise, top.values, scale).argmax(-1, keepdim=True))[:, 0]

    def _frame(self, hidden: torch.Tensor, draws: torch.Tensor, ranks: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
        """The codes of one frame [B, codebooks] from the backbone's last hidden state [B, H]."""
        if self.use_cuda_graphs:
            graph = self._graph(hidden.shape[0])
            if graph is not None:
                return graph(hidden, draws, ranks, scale)
        if self.depth.batch != hidden.shape[0]:
            self.depth.allocate(hidden.shape[0], self.codebooks)
        return self.depth_frame(hidden, draws, ranks, scale)

    def _depth(self, hidden: torch.Tensor, draws: torch.Tensor, ranks: torch.Tensor,
               scale: torch.Tensor) -> torch.Tensor:
        """Codebook 0 from the backbone, then 31 depth-decoder steps; static shapes, no host sync (graph-safe).
        The Gumbel noise of each row's candidates is -log of its Exp(1) `draws`, -inf past its top k (`ranks`)."""
        noise = ranks[:, None] - draws.log()
        projector, vocab = self.model.depth_decoder.model.inputs_embeds_projector, self.vocab
        cos, sin = self.depth.cos[:, None], self.depth.sin[:, None]  # [positions, 1, heads, head dim]
        code = self._pick(hidden @ self.head0.t(), noise[:, 0], scale)
        codes = [code]
        x = torch.stack([projector(hidden), F.embedding(code, self.depth_inputs[:vocab])], dim=1)
        out = self.depth.forward(x, (cos[:2].transpose(0, 1), sin[:2].transpose(0, 1)), 0, None)
        for j in range(1, self.codebooks):
            code = self._pick(out[:, -1] @ self.heads[j - 1], noise[:, j], scale)
            codes.append(code)
            if j < self.codebooks - 1:
                x = F.embedding(code, self.depth_inputs[j * vocab: (j + 1) * vocab])[:, None]
                out = self.depth.forward(x, (cos[j + 1][None], sin[j + 1][None]), j + 1, None)
        return torch.stack(codes, dim=1)

    def _graph(self, batch: int) -> Any:
        """The captured graph for `batch` rows (its batch-size bucket and the top-k width), None if capture failed."""
        size = batch_bucket(batch)
        return self._graphs.get((size, self.kmax), lambda: self._capture(size))

    def _capture(self, batch: int) -> Any:
        try:
            if self._graph_pool is None:  # one memory pool for every graph: replays never overlap
                self._graph_pool = torch.cuda.graph_pool_handle()
            return DepthGraph(self, batch, self._graph_pool)
        except Exception as e:  # capture is an optimization: never a reason to fail a job
            failure = f"batch {batch}: {type(e).__name__}: {str(e)[:200]}"
            log.warning("CUDA graph capture failed at %s; running the depth decoder eagerly", failure)
            self.graph_failures = [*self.graph_failures[-7:], failure]
            return None

    # ---- audio ---------------------------------------------------------------------------------------------------

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """24 kHz fp32 waveform of codes [frames, codebooks] through the codec."""
        if len(codes) == 0:
            return torch.zeros(0)
        with on_device(self.device):
            values = self.model.codec_model.decode(codes.transpose(0, 1)[None]).audio_values
        return values[0, 0].float().cpu()
