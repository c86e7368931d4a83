"""The rows an engine run decodes, one per batch slot, and what each needs per frame (host side and device side)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from producer.request import DEFAULT_TEMPERATURE, DEFAULT_TOP_K

__all__ = ["Row", "Sampling", "Slots", "keep_frame"]


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
        self.frames: list[int] = []  # frames made so far (the host's count: kept, or after an end frame not yet seen)
        self.scale = torch.ones(0, 1, device=device)  # 1 / temperature
        self.out = torch.zeros(0, 0, codebooks, dtype=torch.long, device=device)  # [B, frames, codebooks] kept
        # On the device, so a frame needs no host sync: [0] frames kept (where the next frame goes), [1] 1 once the
        # row made its end frame (free slots too: they keep nothing); the host reads it every few frames.
        self.state = torch.zeros(2, 0, dtype=torch.long, device=device)
        self.position = torch.zeros(0, dtype=torch.long, device=device)  # cache slot of each row's next input
        self.index = torch.zeros(0, dtype=torch.long, device=device)  # arange(B)

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
            fresh = torch.tensor([[0], [1]], device=self.device).expand(2, extra)
            self.state = torch.cat([self.state, fresh], dim=1)
            self.position = torch.cat([self.position, torch.zeros(extra, dtype=torch.long, device=self.device)])
            self.index = torch.arange(len(self.rows), device=self.device)
        if extra > 0 or frames > self.out.shape[1]:
            out = self.out.new_zeros(len(self.rows), max(frames, self.out.shape[1]), self.out.shape[2])
            out[: self.out.shape[0], : self.out.shape[1]] = self.out
            self.out = out

    def place(self, slot: int, row: Row, generator: torch.Generator | None) -> None:
        self.rows[slot], self.generators[slot] = row, generator
        self.lengths[slot], self.frames[slot] = row.length, 0
        self.scale[slot] = 1.0 if row.sampling.greedy else 1.0 / row.sampling.temperature
        self.state[:, slot] = 0
        self.position[slot] = row.length

    def keep(self, slots: list[int]) -> None:
        """Only these slots, in this order."""
        index = torch.tensor(slots, device=self.device)
        self.rows = [self.rows[i] for i in slots]
        self.generators = [self.generators[i] for i in slots]
        self.lengths = [self.lengths[i] for i in slots]
        self.frames = [self.frames[i] for i in slots]
        self.scale, self.out = self.scale[index], self.out[index]
        self.state, self.position = self.state[:, index], self.position[index]
        self.index = torch.arange(len(slots), device=self.device)

    def stepped(self) -> None:
        """Every row made one more frame (the host's count; the device keeps the frames with `keep_frame`)."""
        for i, row in enumerate(self.rows):
            if row is not None:
                self.frames[i] += 1

    def moved(self) -> None:
        """The rows still going moved one cache slot on (the backbone step moved `position` on the device)."""
        for i, row in enumerate(self.rows):
            if row is not None:
                self.lengths[i] += 1

    def release(self, slot: int, kept: int) -> tuple[Row, torch.Tensor]:
        """The row of `slot` and the `kept` frames of codes [frames, codebooks] it made; the slot is free again."""
        row = self.rows[slot]
        assert row is not None
        codes = self.out[slot, :kept].clone()
        self.rows[slot], self.generators[slot] = None, None
        self.state[0, slot], self.state[1, slot] = 0, 1  # a free slot's frames go to its row 0, never past the end
        return row, codes


def keep_frame(codes: torch.Tensor, state: torch.Tensor, out: torch.Tensor, index: torch.Tensor, eos: int) -> None:
    """Keep codes [B, codebooks] of one frame in `out` for every slot whose row has not ended, all on the device
    (`state` and `index` of Slots): a frame whose codes but the last are all `eos` is its row's end frame, not kept;
    past a row's end its frames are written past its kept ones and ignored."""
    kept, done = state[0], state[1]
    done.bitwise_or_((codes[:, :-1] == eos).all(-1))
    out.index_put_((index, kept), codes)
    kept.add_(1 - done)
