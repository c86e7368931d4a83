"""A tiny CSM checkpoint in Sesame's original layout (SesameAILabs/csm models.py names, torchtune's rotary order),
built at test time from the tiny transformers checkpoint, so both hold the same weights (twins).

The renaming is written out here independently of worker/models/original.py: a mistake there shows as a difference.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.mimi_checkpoint import write_moshi_mimi

# transformers' names -> the reference's
_TO_ORIGINAL = [
    (r"^backbone_model\.layers\.", "backbone.layers."), (r"^depth_decoder\.model\.layers\.", "decoder.layers."),
    (r"^backbone_model\.norm\.weight$", "backbone.norm.scale"),
    (r"^depth_decoder\.model\.norm\.weight$", "decoder.norm.scale"),
    (r"\.self_attn\.o_proj\.", ".attn.output_proj."), (r"\.self_attn\.", ".attn."),
    (r"\.input_layernorm\.weight$", ".sa_norm.scale"), (r"\.post_attention_layernorm\.weight$", ".mlp_norm.scale"),
    (r"\.mlp\.gate_proj\.", ".mlp.w1."), (r"\.mlp\.down_proj\.", ".mlp.w2."), (r"\.mlp\.up_proj\.", ".mlp.w3."),
    (r"^embed_text_tokens\.weight$", "text_embeddings.weight"),
    (r"^backbone_model\.embed_tokens\.embed_audio_tokens\.weight$", "audio_embeddings.weight"),
    (r"^depth_decoder\.model\.inputs_embeds_projector\.weight$", "projection.weight"),
    (r"^lm_head\.weight$", "codebook0_head.weight"), (r"^depth_decoder\.codebooks_head\.weight$", "audio_head"),
]
SKIPPED = ("codec_model.", "depth_decoder.model.embed_tokens.", "audio_tokens_offsets")  # tied, or not the CSM's


def _flavor(config: Any) -> dict[str, Any]:
    return {"num_layers": config.num_hidden_layers, "num_heads": config.num_attention_heads,
            "num_kv_heads": config.num_key_value_heads, "embed_dim": config.hidden_size,
            "max_seq_len": config.max_position_embeddings, "intermediate_dim": config.intermediate_size,
            "norm_eps": config.rms_norm_eps, "rope_base": config.rope_theta, "scale_factor": None}


def original_state(model: Any) -> dict[str, Any]:
    """The model's CSM weights under the reference's names, q/k rows in torchtune's interleaved rotary order."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith(SKIPPED) or "audio_tokens_offsets" in name:
            continue
        original = name
        for pattern, replacement in _TO_ORIGINAL:
            original = re.sub(pattern, replacement, original)
        if original.endswith(("q_proj.weight", "k_proj.weight")):
            part = model.config if original.startswith("backbone") else model.config.depth_decoder_config
            heads = part.num_attention_heads if "q_proj" in original else part.num_key_value_heads
            rows, cols = tensor.shape
            tensor = tensor.reshape(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)
        state[original] = tensor.contiguous()
    return state


def build_original_twin(transformers_dir: Path, directory: Path) -> Path:
    """Sesame's original layout of the checkpoint in `transformers_dir`: model.safetensors + config.json (ModelArgs,
    with the tiny flavors), Mimi for moshi, and the tokenizer files."""
    from safetensors.torch import save_file
    from transformers import AutoProcessor, CsmForConditionalGeneration

    model = CsmForConditionalGeneration.from_pretrained(transformers_dir)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(original_state(model), directory / "model.safetensors")
    config = model.config
    args = {"backbone_flavor": "tiny-backbone", "decoder_flavor": "tiny-decoder",
            "text_vocab_size": config.text_vocab_size, "audio_vocab_size": config.vocab_size,
            "audio_num_codebooks": config.num_codebooks,
            "flavors": {"tiny-backbone": _flavor(config), "tiny-decoder": _flavor(config.depth_decoder_config)}}
    (directory / "config.json").write_text(json.dumps(args))
    AutoProcessor.from_pretrained(transformers_dir).tokenizer.save_pretrained(directory)
    write_moshi_mimi(model.codec_model, directory)
    return directory
