"""Sesame's original CSM checkpoint (SesameAILabs/csm `models.py`: torchtune Llama backbone and audio decoder) on
transformers' CsmForConditionalGeneration modules, so the engine runs it as is; moshi's Mimi is its codec.

A directory in the original format holds the weights (`ckpt.pt`, the reference's state dict, or a fine-tune's
`model.safetensors` beside a `config.json` of the reference's ModelArgs), Mimi's weights under moshi's file name
(`tokenizer-e351c8d8-checkpoint125.safetensors`, with `mimi_config.json` when it is not moshi's own Mimi) and the
text tokenizer files (sesame/csm-1b's, which name `<|AUDIO|>` and `<|audio_eos|>`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker.models.errors import CSMModelLoadError

if TYPE_CHECKING:  # it imports torch: only processes that load CSM pay for it
    from worker.models.moshi_codec import MoshiCodec

__all__ = ["CSM_1B_ARGS", "FLAVORS", "MIMI_WEIGHTS", "detect_format", "load_original", "transformers_name"]

MIMI_WEIGHTS = "tokenizer-e351c8d8-checkpoint125.safetensors"  # moshi.models.loaders.MIMI_NAME
CSM_1B_ARGS = {"backbone_flavor": "llama-1B", "decoder_flavor": "llama-100M", "text_vocab_size": 128_256,
               "audio_vocab_size": 2051, "audio_num_codebooks": 32}  # the reference's ModelArgs for sesame/csm-1b
_LLAMA = {"max_seq_len": 2048, "intermediate_dim": 8192, "norm_eps": 1e-5, "rope_base": 500_000, "scale_factor": 32}
# The reference's flavors (torchtune llama3_2 arguments); a config.json may add its own under "flavors".
FLAVORS = {"llama-1B": {**_LLAMA, "num_layers": 16, "num_heads": 32, "num_kv_heads": 8, "embed_dim": 2048},
           "llama-100M": {**_LLAMA, "num_layers": 4, "num_heads": 8, "num_kv_heads": 2, "embed_dim": 1024}}
_IGNORED = re.compile(r"kv_cache|pos_embeddings|causal_mask")  # torchtune's caches and rotary tables, not weights
_RENAMES = [
    (r"^backbone\.layers\.", "backbone_model.layers."), (r"^decoder\.layers\.", "depth_decoder.model.layers."),
    (r"^backbone\.norm\.scale$", "backbone_model.norm.weight"),
    (r"^decoder\.norm\.scale$", "depth_decoder.model.norm.weight"),
    (r"\.attn\.output_proj\.", ".self_attn.o_proj."), (r"\.attn\.", ".self_attn."),
    (r"\.sa_norm\.scale$", ".input_layernorm.weight"), (r"\.mlp_norm\.scale$", ".post_attention_layernorm.weight"),
    (r"\.mlp\.w1\.", ".mlp.gate_proj."), (r"\.mlp\.w2\.", ".mlp.down_proj."), (r"\.mlp\.w3\.", ".mlp.up_proj."),
    (r"^text_embeddings\.weight$", "embed_text_tokens.weight"),
    (r"^audio_embeddings\.weight$", "backbone_model.embed_tokens.embed_audio_tokens.weight"),
    (r"^projection\.weight$", "depth_decoder.model.inputs_embeds_projector.weight"),
    (r"^codebook0_head\.weight$", "lm_head.weight"), (r"^audio_head$", "depth_decoder.codebooks_head.weight"),
]


def transformers_name(original: str) -> str:
    for pattern, replacement in _RENAMES:
        original = re.sub(pattern, replacement, original)
    return original


def _model_args(directory: Path) -> dict[str, Any] | None:
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as e:
        raise CSMModelLoadError(f"{path} is not JSON: {e}") from e
    return config if isinstance(config, dict) and "backbone_flavor" in config else None


def _weights(directory: Path) -> Path | None:
    if _model_args(directory) is not None and (directory / "model.safetensors").exists():
        return directory / "model.safetensors"
    return directory / "ckpt.pt" if (directory / "ckpt.pt").exists() else None


def detect_format(directory: Path, requested: str = "auto") -> str:
    """"original" or "transformers": as requested, else by the files (a transformers config.json wins)."""
    if requested != "auto":
        return requested
    config = directory / "config.json"
    if config.exists() and _model_args(directory) is None and '"csm"' in config.read_text():
        return "transformers"
    return "original" if _weights(directory) is not None else "transformers"


def load_original(directory: Path, mimi: Path | None = None) -> tuple[Any, Any, MoshiCodec]:
    """(processor, CsmForConditionalGeneration without its codec, moshi's Mimi) on the CPU, in fp32; Mimi's
    weights from `mimi`, else from the directory."""
    weights = _weights(directory)
    if weights is None:
        raise CSMModelLoadError(f"{directory} has no original-format weights: ckpt.pt, or model.safetensors with a "
                                "config.json of the reference's ModelArgs (backbone_flavor, ...)")
    args = {**CSM_1B_ARGS, **(_model_args(directory) or {})}
    processor = _processor(directory)
    codec = _codec(mimi or directory / MIMI_WEIGHTS, int(args["audio_num_codebooks"]), int(args["audio_vocab_size"]))
    config = _csm_config(args, processor.tokenizer, int(codec.mimi.cardinality))
    return processor, _model(config, _read_state(weights), weights.name), codec


def _processor(directory: Path) -> Any:
    from transformers import AutoTokenizer, CsmProcessor, EncodecFeatureExtractor

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as e:
        raise CSMModelLoadError(f"{directory} has no usable text tokenizer (tokenizer.json, tokenizer_config.json: "
                                f"copy sesame/csm-1b's): {type(e).__name__}: {str(e)[:200]}") from e
    missing = [t for t in ("<|AUDIO|>", "<|audio_eos|>") if t not in tokenizer.get_vocab()]
    if missing:
        raise CSMModelLoadError(f"the tokenizer in {directory} lacks {', '.join(missing)}: use sesame/csm-1b's")
    extractor = EncodecFeatureExtractor(feature_size=1, sampling_rate=24_000)
    return CsmProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _codec(path: Path, codebooks: int, vocab: int) -> MoshiCodec:
    from worker.models.moshi_codec import MoshiCodec

    if not path.exists():
        raise CSMModelLoadError(f"{path.parent} lacks Mimi's weights {path.name} (moshi's file, from "
                                "kyutai/moshiko-pytorch-bf16)")
    try:
        codec = MoshiCodec.load(path, codebooks)
    except Exception as e:
        raise CSMModelLoadError(f"{path.name} does not load as moshi's Mimi: {type(e).__name__}: "
                                f"{str(e)[:300]}") from e
    if int(codec.mimi.cardinality) > vocab:
        raise CSMModelLoadError(f"{path.name} has codebooks of {codec.mimi.cardinality} codes, more than the model's "
                                f"{vocab} audio ids")
    return codec


def _llama(flavor: dict[str, Any]) -> dict[str, Any]:
    scale = flavor.get("scale_factor")
    # torchtune's Llama3ScaledRoPE (old context 8192, low/high frequency factors 1 and 4) as sesame/csm-1b's
    # transformers config spells it: the same wavelength bounds and smoothing (8192 / 1 = 1024 / 0.125, ...)
    scaling = None if scale is None else {"rope_type": "llama3", "factor": float(scale), "low_freq_factor": 0.125,
                                          "high_freq_factor": 0.5, "original_max_position_embeddings": 1024}
    return {"hidden_size": flavor["embed_dim"], "intermediate_size": flavor["intermediate_dim"],
            "num_hidden_layers": flavor["num_layers"], "num_attention_heads": flavor["num_heads"],
            "num_key_value_heads": flavor["num_kv_heads"], "max_position_embeddings": flavor["max_seq_len"],
            "rms_norm_eps": flavor["norm_eps"], "rope_theta": flavor["rope_base"], "rope_scaling": scaling}


def _csm_config(args: dict[str, Any], tokenizer: Any, codebook_size: int) -> Any:
    from transformers import CsmConfig

    flavors = {**FLAVORS, **args.get("flavors", {})}
    unknown = [f for f in (args["backbone_flavor"], args["decoder_flavor"]) if f not in flavors]
    if unknown:
        raise CSMModelLoadError(f"unknown flavor {', '.join(unknown)} in config.json: known are {', '.join(flavors)}")
    backbone, decoder = flavors[args["backbone_flavor"]], flavors[args["decoder_flavor"]]
    codebooks, vocab = int(args["audio_num_codebooks"]), int(args["audio_vocab_size"])
    audio, audio_eos = tokenizer.convert_tokens_to_ids(["<|AUDIO|>", "<|audio_eos|>"])
    depth = {**_llama(decoder), "num_codebooks": codebooks, "backbone_hidden_size": backbone["embed_dim"],
             "vocab_size": vocab, "max_position_embeddings": codebooks + 1}
    return CsmConfig(**_llama(backbone), num_codebooks=codebooks, vocab_size=vocab,
                     text_vocab_size=int(args["text_vocab_size"]), bos_token_id=tokenizer.bos_token_id,
                     pad_token_id=audio, audio_token_id=audio, audio_eos_token_id=audio_eos,
                     codebook_pad_token_id=vocab - 1, codebook_eos_token_id=0, depth_decoder_config=depth,
                     codec_config={"model_type": "mimi", "codebook_size": codebook_size, "num_quantizers": codebooks})


def _read_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CSMModelLoadError(f"{path.name} is not a readable checkpoint: {type(e).__name__}: {str(e)[:200]}") from e
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise CSMModelLoadError(f"{path.name} holds no state dict of parameters")
    return state


def _mapped(state: dict[str, Any], config: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(the original parameters under transformers' names, q/k rows reordered for transformers' rotary layout;
    each transformers name's original name)."""
    out, origin = {}, {}
    for name, tensor in state.items():
        if _IGNORED.search(name):
            continue
        target = transformers_name(name)
        if target.endswith(("q_proj.weight", "k_proj.weight")):
            part = config if target.startswith("backbone") else config.depth_decoder_config
            heads = part.num_attention_heads if "q_proj" in target else part.num_key_value_heads
            rows, cols = tensor.shape
            tensor = tensor.reshape(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)
        out[target], origin[target] = tensor, name
    audio = out.get("backbone_model.embed_tokens.embed_audio_tokens.weight")
    if audio is not None:  # the depth decoder's copy of the audio embeddings (tied)
        out["depth_decoder.model.embed_tokens.weight"] = audio
    return out, origin


def _model(config: Any, state: dict[str, Any], source: str) -> Any:
    import torch
    from transformers import CsmForConditionalGeneration

    with torch.device("meta"):  # no random init of weights the checkpoint replaces
        model = CsmForConditionalGeneration(config)
    model.codec_model = None  # moshi's Mimi decodes
    model.to_empty(device="cpu")
    expected = model.state_dict()
    mapped, origin = _mapped(state, config)
    _check(mapped, expected, origin, source)
    model.load_state_dict({k: v.float() for k, v in mapped.items()}, strict=True)
    model.tie_weights()
    # buffers outside the state dict (built on "meta", so empty): compute them again
    model.backbone_model.embed_tokens.audio_tokens_offsets = torch.arange(config.num_codebooks) * config.vocab_size
    for module in model.modules():
        if hasattr(module, "rope_init_fn"):
            module.inv_freq, module.attention_scaling = module.rope_init_fn(module.config, "cpu")  # type: ignore[operator]
            module.original_inv_freq = module.inv_freq
    return model.eval()


def _check(mapped: dict[str, Any], expected: dict[str, Any], origin: dict[str, str], source: str) -> None:
    """Every parameter the config needs, and no other, each of its shape; named as in the checkpoint where it has
    the name (a missing one by what the engine lacks)."""
    unknown = sorted(origin[k] for k in set(mapped) - set(expected))
    missing = sorted(set(expected) - set(mapped))
    shared = sorted(set(mapped) & set(expected), key=lambda k: origin.get(k, k))
    wrong = list(dict.fromkeys(f"{origin.get(k, k)} is {list(mapped[k].shape)}, the config needs "
                               f"{list(expected[k].shape)}" for k in shared if mapped[k].shape != expected[k].shape))
    for problem, names in (("unknown parameters", unknown), ("missing parameters", missing),
                           ("parameters of the wrong shape", wrong)):
        if names:
            more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
            raise CSMModelLoadError(f"{source}: {problem} for the CSM in its config: {'; '.join(names[:3])}{more}")
