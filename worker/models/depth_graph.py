"""The depth decoder and sampling of one frame, captured as one CUDA graph per batch-size bucket and top-k bucket,
kept in a least-recently-used cache."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

__all__ = ["BUCKETS", "DepthGraph", "GraphCache", "batch_bucket", "k_bucket"]

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # batch sizes captured: a batch runs in the smallest that holds it


def batch_bucket(batch: int) -> int:
    """The captured batch size that serves `batch` rows: the next of BUCKETS, past 64 the next multiple of 64."""
    for size in BUCKETS:
        if batch <= size:
            return size
    return -(-batch // BUCKETS[-1]) * BUCKETS[-1]


def k_bucket(k: int, vocab: int) -> int:
    """The top-k width sampled (and captured) for a largest top-k of `k`: 1 (greedy), else the next power of two,
    at most `vocab`; candidates past a row's own k are masked, so the codes do not depend on it."""
    return 1 if k <= 1 else min(vocab, 1 << (k - 1).bit_length())


class GraphCache:
    """At most `capacity` graphs (each holds its own memory), the least recently used evicted first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        while len(self.entries) >= self.capacity:
            self.entries.popitem(last=False)
        self.entries[key] = build()
        return self.entries[key]

    def __len__(self) -> int:
        return len(self.entries)


class DepthGraph:
    """Replays `engine.depth_frame` (eager or compiled) for up to `batch` rows: inputs copied into the first rows
    of static tensors (the rest decode stale inputs, ignored), codes cloned out. Graphs may share one memory `pool`:
    they replay one after another on one stream, each rewriting its intermediates before it reads them, and each
    graph's output stays allocated while the graph lives."""

    def __init__(self, engine: Any, batch: int, pool: Any = None) -> None:
        hidden_size = engine.model.lm_head.weight.shape[1]
        self.hidden = torch.zeros(batch, hidden_size, device=engine.device, dtype=engine.dtype)
        self.draws = torch.ones(batch, engine.codebooks, engine.kmax, device=engine.device)
        self.ranks = torch.zeros(batch, engine.kmax, device=engine.device)
        self.scale = torch.ones(batch, 1, device=engine.device)
        engine.depth.allocate(batch, engine.codebooks)
        self.kv = engine.depth.kv  # the graph writes into it: keep it alive
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                engine.depth_frame(self.hidden, self.draws, self.ranks, self.scale)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool):  # a pool shared by graphs that never replay at once
            self.codes = engine.depth_frame(self.hidden, self.draws, self.ranks, self.scale)

    def __call__(self, hidden: torch.Tensor, draws: torch.Tensor, ranks: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
        rows = len(hidden)
        self.hidden[:rows].copy_(hidden)
        self.draws[:rows].copy_(draws)
        self.ranks[:rows].copy_(ranks)
        self.scale[:rows].copy_(scale)
        self.graph.replay()
        return self.codes[:rows].clone()
