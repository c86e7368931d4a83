"""One decoder stack of CSM (the backbone or the depth decoder) run layer by layer against its own K/V cache, with
few operators per step: fused weights, `F.rms_norm`, one rotary op set for q, k and v together, one cache write."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Layer", "Stack", "fp32_rotary"]


def fp32_rotary(rotary: Any, device: torch.device | str) -> Any:
    """A fresh copy of a transformers rotary embedding, its frequencies computed in fp32 from the config: a model
    cast to bf16 as a whole rounds `inv_freq` too, a phase error of ~1 rad by position 1,000."""
    return type(rotary)(config=rotary.config, device=device)


def _fuse(*linears: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight (and bias) for several projections of the same input; each module's parameters become views into
    it, so the model (transformers' own forward included) keeps working and no weight is held twice."""
    weight = torch.cat([m.weight.detach() for m in linears])
    bias = None if linears[0].bias is None else torch.cat([m.bias.detach() for m in linears])
    at = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[at: at + rows], requires_grad=False)
        if bias is not None:
            m.bias = torch.nn.Parameter(bias[at: at + rows], requires_grad=False)
        at += rows
    return weight, bias


@dataclass
class Layer:
    """One decoder layer's weights, fused: q/k/v in one projection, gate/up in another."""

    norm1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    gate_up: torch.Tensor
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    eps: float

    @classmethod
    def of(cls, layer: Any) -> Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv, qkv_bias = _fuse(attn.q_proj, attn.k_proj, attn.v_proj)
        gate_up, gate_up_bias = _fuse(mlp.gate_proj, mlp.up_proj)
        eps = float(getattr(layer.input_layernorm, "variance_epsilon", 1e-6))
        return cls(layer.input_layernorm.weight, qkv, qkv_bias, attn.o_proj.weight, attn.o_proj.bias,
                   layer.post_attention_layernorm.weight, gate_up, gate_up_bias, mlp.down_proj.weight,
                   mlp.down_proj.bias, eps)


def _project_add(residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor | None) -> torch.Tensor:
    """residual + x @ weight.T (+ bias) as one addmm."""
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]), x.reshape(-1, x.shape[-1]), weight.t())
    return (out if bias is None else out + bias).view(shape)


class Stack:
    """The layers of one stack and its K/V cache [layers, batch, 2 x kv heads (keys, then values), slots, head dim]."""

    def __init__(self, model: Any, device: torch.device, dtype: torch.dtype) -> None:
        config = model.config
        self.layers = [Layer.of(layer) for layer in model.layers]
        self.norm, self.eps = model.norm.weight, float(getattr(model.norm, "variance_epsilon", 1e-6))
        self.hidden = int(config.hidden_size)
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.cos, self.sin = self._rotary_tables(model, config, device, dtype)
        self.kv = torch.empty(0)
        self._layer_index = [torch.tensor(i, device=device) for i in range(len(self.layers))]
        self._kv_rows = torch.arange(2 * self.kv_heads, device=device)[None]  # keys', then values' heads

    def _rotary_tables(self, model: Any, config: Any, device: torch.device,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin [positions, q + k + v heads, head dim], computed in fp32, then cast: q and k turn,
        v does not (cos 1, sin 0), so the rotary runs once over the fused projection; sin carries the sign of the
        rotated half, so rotate(x) = x * cos + roll(x, half) * sin."""
        positions = torch.arange(config.max_position_embeddings, device=device)[None]
        cos, sin = fp32_rotary(model.rotary_emb, device)(torch.empty(0, device=device), positions)
        half = self.head_dim // 2
        sign = torch.cat([-torch.ones(half, device=device), torch.ones(self.head_dim - half, device=device)])
        turned, still = self.heads + self.kv_heads, self.kv_heads
        cos_all = torch.cat([cos[0, :, None].expand(-1, turned, -1),
                             torch.ones(len(cos[0]), still, self.head_dim, device=device)], dim=1)
        sin_all = torch.cat([(sin[0] * sign)[:, None].expand(-1, turned, -1),
                             torch.zeros(len(sin[0]), still, self.head_dim, device=device)], dim=1)
        return cos_all.to(dtype), sin_all.to(dtype)

    @property
    def batch(self) -> int:
        return int(self.kv.shape[1]) if self.kv.dim() == 5 else 0

    @property
    def width(self) -> int:
        return int(self.kv.shape[3]) if self.kv.dim() == 5 else 0

    def allocate(self, batch: int, slots: int) -> None:
        shape = (len(self.layers), batch, 2 * self.kv_heads, slots, self.head_dim)
        self.kv = torch.zeros(shape, device=self.cos.device, dtype=self.cos.dtype)

    def resize(self, batch: int, slots: int) -> None:
        """Grow (or cut) to `batch` rows of `slots` slots, keeping what fits."""
        old = self.kv
        self.allocate(batch, slots)
        if old.dim() == 5:
            b, s = min(batch, old.shape[1]), min(slots, old.shape[3])
            self.kv[:, :b, :, :s] = old[:, :b, :, :s]

    def keep(self, rows: torch.Tensor) -> None:
        self.kv = self.kv.index_select(1, rows)

    def rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B or 1, T, heads, head dim] for positions [B or 1, T]."""
        return self.cos[positions], self.sin[positions]

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], start: int | torch.Tensor,
                mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, T, H] with its `rotary` (cos, sin from `rotary()`), written at cache slots start..start+T-1 and
        attending to slots before; `start` a tensor [B]: one step (T = 1) per row at its own slot (`rows` =
        arange(B)), keys up to the mask's width.

        `mask` [B, 1, T, keys] (True or 0.0 = may attend); None means plain causal attention.
        """
        for i, layer in enumerate(self.layers):
            x = self._attend(i, layer, x, rotary, start, mask, rows)
            h = F.linear(F.rms_norm(x, (self.hidden,), layer.norm2, layer.eps), layer.gate_up, layer.gate_up_bias)
            gate, up = h.chunk(2, dim=-1)
            x = _project_add(x, F.silu(gate) * up, layer.down, layer.down_bias)
        return F.rms_norm(x, (self.hidden,), self.norm, self.eps)

    def _write(self, i: int, kv: torch.Tensor, start: int | torch.Tensor, mask: torch.Tensor | None,
               rows: torch.Tensor | None) -> Any:
        """Store the new keys and values [B, 2 x kv heads, T, head dim] in one op; the number of slots to attend to
        (the mask's width as it is: under torch.compile a dynamic size, which int() would fix to one value)."""
        if isinstance(start, int):
            end = start + kv.shape[2]
            self.kv[i, :, :, start:end] = kv
            return end
        assert mask is not None and rows is not None and kv.shape[2] == 1, "a step per row needs its mask and rows"
        # Indexed on the cache itself, not on a view of it: torch.compile then writes the B slots in place (through
        # a view it copied the whole cache every step).
        self.kv.index_put_((self._layer_index[i], rows[:, None], self._kv_rows, start[:, None]), kv[:, :, 0])
        return mask.shape[-1]

    def _attend(self, i: int, layer: Layer, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                start: int | torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None) -> torch.Tensor:
        """x + attention(x): one fused projection, one rotary over q, k and v, one cache write."""
        batch, length, _ = x.shape
        h = F.rms_norm(x, (self.hidden,), layer.norm1, layer.eps)
        qkv = F.linear(h, layer.qkv, layer.qkv_bias).view(batch, length, -1, self.head_dim)
        cos, sin = rotary
        qkv = torch.addcmul(qkv * cos, qkv.roll(self.head_dim // 2, -1), sin)
        end = self._write(i, qkv[:, :, self.heads:].transpose(1, 2), start, mask, rows)
        keys, values = self.kv[i, :, : self.kv_heads, :end], self.kv[i, :, self.kv_heads:, :end]
        if length == 1:  # fold the query heads of a group into the query axis: no repeated K/V
            folded = qkv[:, 0, : self.heads].view(batch, self.kv_heads, self.heads // self.kv_heads, self.head_dim)
            out = F.scaled_dot_product_attention(folded, keys, values, attn_mask=mask)
        else:
            q = qkv[:, :, : self.heads].transpose(1, 2)
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=mask is None,
                                                 enable_gqa=True)
            out = out.transpose(1, 2)
        return _project_add(x, out.reshape(batch, length, -1), layer.o, layer.o_bias)
