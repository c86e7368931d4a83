"""The depth decoder and sampling of one frame, captured as one CUDA graph per batch size."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["DepthGraph"]


class DepthGraph:
    """Replays `engine._depth` for `batch` rows: inputs copied into static tensors, codes cloned out."""

    def __init__(self, engine: Any, batch: int) -> None:
        hidden_size = engine.model.lm_head.weight.shape[1]
        self.hidden = torch.zeros(batch, hidden_size, device=engine.device, dtype=engine.dtype)
        self.noise = torch.zeros(batch, engine.codebooks, engine.kmax, device=engine.device)
        self.scale = torch.ones(batch, 1, device=engine.device)
        engine.depth.allocate(batch, engine.codebooks)
        self.kv = engine.depth.kv  # the graph writes into it: keep it alive
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up kernels and allocator outside the graph
                engine._depth(self.hidden, self.noise, self.scale)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.codes = engine._depth(self.hidden, self.noise, self.scale)

    def __call__(self, hidden: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        self.hidden.copy_(hidden)
        self.noise.copy_(noise)
        self.scale.copy_(scale)
        self.graph.replay()
        return self.codes.clone()
