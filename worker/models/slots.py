"""The rows an engine run decodes, one per batch slot, and what each needs per frame (host side and device side)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from producer.request import DEFAULT_TEMPERATURE, DEFAULT_TOP_K

__all__ = ["Row", "Sampling", "Slots"]


@dataclass(frozen=True)
class Sampling:
    """How one row picks its codes: top-k 1 is greedy."""

    temperature: float = DEFAULT_TEMPERATURE
    top_k: int = DEFAULT_TOP_K
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.top_k <= 1 or self.temperature <= 0


@dataclass(eq=False)  # compared and hashed by identity: the caller's handle on its row
class Row:
    """One sequence to decode: its prompt [S, H] after its prefix [P, H] (None: none; rows handed over together
    that share a prefix tensor share its prefill), at most `cap` frames."""

    prefix: torch.Tensor | None
    prompt: torch.Tensor
    cap: int
    sampling: Sampling
    streams: bool = False  # the run's on_frame hears of its frames (frame streaming); other rows cost it nothing

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else len(self.prefix)

    @property
    def length(self) -> int:
        """Cache slots its prefix and prompt fill: the position of its first frame."""
        return self.prefix_len + len(self.prompt)


class Slots:
    """Row i of the backbone's cache belongs to rows[i] (None: free). Each row's prefix, prompt and frames lie
    contiguous from cache slot 0, so a row's cache slot is its position id, whoever shares the batch."""

    def __init__(self, device: torch.device, codebooks: int) -> None:
        self.device = device
        self.rows: list[Row | None] = []
        self.generators: list[torch.Generator | None] = []
        self.lengths: list[int] = []  # cache slots filled = the position of the row's next input
        self.frames: list[int] = []  # frames kept so far
        self.scale = torch.ones(0, 1, device=device)  # 1 / temperature
        self.kth = torch.zeros(0, 1, dtype=torch.long, device=device)  # top-k - 1
        self.out = torch.zeros(0, 0, codebooks, dtype=torch.long, device=device)  # [B, frames, codebooks] kept

    def __len__(self) -> int:
        return len(self.rows)

    def live(self) -> list[int]:
        return [i for i, row in enumerate(self.rows) if row is not None]

    def free(self) -> list[int]:
        return [i for i, row in enumerate(self.rows) if row is None]

    def grow(self, batch: int, frames: int) -> None:
        """At least `batch` slots (new ones free) and room for `frames` frames per row."""
        extra = batch - len(self.rows)
        if extra > 0:
            self.rows += [None] * extra
            self.generators += [None] * extra
            self.lengths += [0] * extra
            self.frames += [0] * extra
            self.scale = torch.cat([self.scale, torch.ones(extra, 1, device=self.device)])
            self.kth = torch.cat([self.kth, torch.zeros(extra, 1, dtype=torch.long, device=self.device)])
        if extra > 0 or frames > self.out.shape[1]:
            out = self.out.new_zeros(len(self.rows), max(frames, self.out.shape[1]), self.out.shape[2])
            out[: self.out.shape[0], : self.out.shape[1]] = self.out
            self.out = out

    def place(self, slot: int, row: Row, generator: torch.Generator | None, vocab: int) -> None:
        greedy = row.sampling.greedy
        self.rows[slot], self.generators[slot] = row, generator
        self.lengths[slot], self.frames[slot] = row.length, 0
        self.scale[slot] = 1.0 if greedy else 1.0 / row.sampling.temperature
        self.kth[slot] = 0 if greedy else min(row.sampling.top_k, vocab) - 1

    def keep(self, slots: list[int]) -> None:
        """Only these slots, in this order."""
        index = torch.tensor(slots, device=self.device)
        self.rows = [self.rows[i] for i in slots]
        self.generators = [self.generators[i] for i in slots]
        self.lengths = [self.lengths[i] for i in slots]
        self.frames = [self.frames[i] for i in slots]
        self.scale, self.kth, self.out = self.scale[index], self.kth[index], self.out[index]

    def store(self, codes: torch.Tensor, slots: list[int]) -> None:
        """Keep codes [B, codebooks] of one frame for these slots."""
        if slots:
            index = torch.tensor(slots, device=self.device)
            at = torch.tensor([self.frames[i] for i in slots], device=self.device)
            self.out[index, at] = codes[index]
            for i in slots:
                self.frames[i] += 1

    def release(self, slot: int) -> tuple[Row, torch.Tensor]:
        """The row of `slot` and its codes [frames, codebooks]; the slot is free again."""
        row = self.rows[slot]
        assert row is not None
        codes = self.out[slot, : self.frames[slot]].clone()
        self.rows[slot], self.generators[slot] = None, None
        return row, codes
