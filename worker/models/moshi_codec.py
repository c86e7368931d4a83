"""Mimi through moshi (the codec of Sesame's reference implementation): encode, decode and streaming decode.

Loaded through `moshi.models.loaders.get_mimi` from moshi's weights file, or built from transformers' MimiModel
(same weights, renamed), so a transformers-format checkpoint can stream too.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["MIMI_CONFIG_NAME", "MoshiCodec", "mimi_config_from_transformers", "moshi_state_from_transformers"]

MIMI_CONFIG_NAME = "mimi_config.json"  # optional, moshi's mimi_config layout; absent: moshi's own Mimi

# moshi's parameter names -> transformers' (transformers' conversion script, applied in order).
_MOSHI_TO_TRANSFORMERS = [
    ("conv.conv.conv", "conv"), ("convtr.convtr.convtr", "conv"), ("conv.conv", "conv"), ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"), ("_initialized", "initialized"), ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"), ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"), ("linear2", "mlp.fc2"), ("self_attn.out_projs.0", "self_attn.o_proj"),
    ("norm1", "input_layernorm"), ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"), ("layer_scale_2", "mlp_layer_scale"),
]


def _transformers_name(moshi_name: str) -> str:
    for old, new in _MOSHI_TO_TRANSFORMERS:
        moshi_name = moshi_name.replace(old, new)
    return moshi_name


def _interleaved_rope(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers rotates half-split head dims, moshi interleaved pairs: undo transformers' permutation."""
    rows, cols = weight.shape
    return weight.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def mimi_config_from_transformers(config: Any) -> dict[str, Any]:
    """moshi's mimi_config for a transformers MimiConfig (the same architecture)."""
    from moshi.models import loaders

    mimi: dict[str, Any] = copy.deepcopy(loaders._mimi_config)
    dim = int(config.hidden_size)
    mimi.update(sample_rate=config.sampling_rate, channels=config.audio_channels, frame_rate=config.frame_rate)
    mimi["seanet"].update(
        channels=config.audio_channels, dimension=dim, n_filters=config.num_filters,
        ratios=list(config.upsampling_ratios),
        n_residual_layers=config.num_residual_layers, kernel_size=config.kernel_size, compress=config.compress,
        residual_kernel_size=config.residual_kernel_size, last_kernel_size=config.last_kernel_size,
        dilation_base=config.dilation_growth_rate, causal=config.use_causal_conv, pad_mode=config.pad_mode,
        true_skip=not config.use_conv_shortcut)
    mimi["quantizer"].update(dimension=config.vector_quantization_hidden_dimension, n_q=config.num_quantizers,
                             bins=config.codebook_size, input_dimension=dim, output_dimension=dim)
    mimi["transformer"].update(
        d_model=dim, num_heads=config.num_attention_heads, num_layers=config.num_hidden_layers,
        layer_scale=config.layer_scale_initial_scale, context=config.sliding_window, max_period=config.rope_theta,
        dim_feedforward=config.intermediate_size, input_dimension=dim, output_dimensions=[dim])
    return dict(mimi)


def moshi_state_from_transformers(state: dict[str, torch.Tensor], config: Any,
                                  moshi_names: list[str]) -> dict[str, torch.Tensor]:
    """moshi's Mimi parameters (`moshi_names`) from transformers' MimiModel state dict."""
    out = {}
    heads, kv_heads = int(config.num_attention_heads), int(config.num_key_value_heads)
    for name in moshi_names:
        if name.endswith("self_attn.in_projs.0.weight"):
            base = _transformers_name(name.removesuffix("in_projs.0.weight"))
            out[name] = torch.cat([_interleaved_rope(state[base + "q_proj.weight"], heads),
                                   _interleaved_rope(state[base + "k_proj.weight"], kv_heads),
                                   state[base + "v_proj.weight"]])
        else:
            out[name] = state[_transformers_name(name)]
    return out


class MoshiCodec:
    """moshi's Mimi in fp32 with `num_codebooks` codebooks: codes are [frames, codebooks], audio 24 kHz mono."""

    name = "moshi-mimi"

    def __init__(self, mimi: Any, num_codebooks: int) -> None:
        self.mimi = mimi.eval()
        self.mimi.set_num_codebooks(num_codebooks)
        self.num_codebooks = num_codebooks

    @classmethod
    def load(cls, weights: Path, num_codebooks: int, device: str = "cpu") -> MoshiCodec:
        """From moshi's weights file, with mimi_config.json beside it when the architecture is not moshi's own."""
        from moshi.models import loaders

        config_path = weights.parent / MIMI_CONFIG_NAME
        config = json.loads(config_path.read_text()) if config_path.exists() else None
        mimi = loaders.get_mimi(weights, config, device=device, num_codebooks=1)
        if mimi.total_codebooks < num_codebooks:
            raise ValueError(f"it has {mimi.total_codebooks} codebooks, the model needs {num_codebooks}")
        return cls(mimi, num_codebooks)

    @classmethod
    def from_transformers(cls, codec_model: Any, num_codebooks: int) -> MoshiCodec:
        """The same weights as a transformers MimiModel, in moshi's Mimi (for streaming decode)."""
        from moshi.models import loaders

        config = mimi_config_from_transformers(codec_model.config)
        weight = next(codec_model.parameters())
        mimi = loaders.get_mimi(None, config, device=weight.device, num_codebooks=num_codebooks)
        state = moshi_state_from_transformers(codec_model.state_dict(), codec_model.config, list(mimi.state_dict()))
        mimi.load_state_dict(state)
        return cls(mimi, num_codebooks)

    @property
    def device(self) -> torch.device:
        return next(self.mimi.parameters()).device

    def to(self, device: str) -> MoshiCodec:
        self.mimi.to(device=device, dtype=torch.float32)
        return self

    @torch.inference_mode()
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """Codes [frames, codebooks] of a 24 kHz mono waveform."""
        codes = self.mimi.encode(audio.to(self.device, torch.float32)[None, None])
        return codes[0].transpose(0, 1)

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """24 kHz fp32 waveform (CPU) of codes [frames, codebooks]; in a streaming context, of the next frames."""
        if len(codes) == 0:
            return torch.zeros(0)
        return self.mimi.decode(codes.to(self.device).transpose(0, 1)[None])[0, 0].float().cpu()
