"""One decoder stack of CSM (the backbone or the depth decoder) run layer by layer against its own K/V cache."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Stack", "fp32_rotary"]


def fp32_rotary(rotary: Any, device: torch.device | str) -> Any:
    """A fresh copy of a transformers rotary embedding, its frequencies computed in fp32 from the config: a model
    cast to bf16 as a whole rounds `inv_freq` too, a phase error of ~1 rad by position 1,000."""
    return type(rotary)(config=rotary.config, device=device)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Stack:
    """The layers of one stack and its K/V tensors [layers, batch, kv heads, slots, head dim]."""

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

    def resize(self, batch: int, slots: int) -> None:
        """Grow (or cut) to `batch` rows of `slots` slots, keeping what fits."""
        old_k, old_v = self.k, self.v
        self.allocate(batch, slots)
        if old_k.dim() == 5:
            b, s = min(batch, old_k.shape[1]), min(slots, old_k.shape[3])
            self.k[:, :b, :, :s] = old_k[:, :b, :, :s]
            self.v[:, :b, :, :s] = old_v[:, :b, :, :s]

    def keep(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k.index_select(1, rows), self.v.index_select(1, rows)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, start: int | torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, T, H] with `positions` [B or 1, T], written at cache slots start..start+T-1 and attending to slots
        before; `start` a tensor [B]: one step (T = 1) per row at its own slot, keys up to the mask's width.

        `mask` [B, 1, T, keys] (True = may attend); None means plain causal attention.
        """
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        for i, layer in enumerate(self.layers):
            x = x + self._attend(i, layer.self_attn, layer.input_layernorm(x), cos, sin, start, mask)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.norm(x)

    def _write(self, i: int, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor,
               mask: torch.Tensor | None) -> int:
        """Store the new keys and values; the number of slots to attend to."""
        if isinstance(start, int):
            end = start + k.shape[2]
            self.k[i, :, :, start:end], self.v[i, :, :, start:end] = k, v
            return end
        assert mask is not None and k.shape[2] == 1, "a step per row needs its mask"
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[i][rows, :, start], self.v[i][rows, :, start] = k[:, :, 0], v[:, :, 0]
        return int(mask.shape[-1])

    def _attend(self, i: int, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                start: int | torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, _ = x.shape
        q = attn.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        end = self._write(i, _rotate(k, cos, sin), v, start, mask)
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
